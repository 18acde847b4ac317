//go:build !unix

package main

// nginxUser returns no user directive: without Unix users, nginx's
// workers run as kabench does.
func nginxUser(string) (string, error) { return "", nil }
