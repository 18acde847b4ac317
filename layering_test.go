package keepalive

import (
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The floors of the package's files (CONTRIBUTING.md, "The code"): the
// composers on top, the host's facade in the middle, and on the ground
// every other file, the mechanisms, which never see the Transport or a
// host's state.
var (
	topFloor    = []string{"attempt.go", "client.go", "hedge.go", "options.go", "retry.go", "transport.go"}
	middleFloor = []string{"host.go"}
)

// TestLayering type-checks the package's files and holds them to their
// floors: a file uses names (types, functions, fields, methods) of its
// own floor or of the floors below, never above; and no more than 3 pairs
// of files use each other both ways, nor more than 4 files each other in
// a circle. A new file is on the ground floor until it is named above.
func TestLayering(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks net/http from source: skipped with -short")
	}
	t.Parallel()
	uses := fileUses(t, ".")
	floor := func(f string) int {
		switch {
		case slices.Contains(topFloor, f):
			return 2
		case slices.Contains(middleFloor, f):
			return 1
		}
		return 0
	}
	var pairs []string
	for from, tos := range uses {
		for to := range tos {
			if floor(to) > floor(from) {
				t.Errorf("%s (floor %d) uses %s (floor %d), above it", from, floor(from), to, floor(to))
			}
			if from < to && uses[to][from] {
				pairs = append(pairs, from+" <-> "+to)
			}
		}
	}
	slices.Sort(pairs)
	t.Logf("files using each other both ways: %v", pairs)
	if len(pairs) > 3 {
		t.Errorf("%d pairs of files use each other both ways, at most 3: %v", len(pairs), pairs)
	}
	for _, knot := range knots(uses) {
		if len(knot) > 4 {
			t.Errorf("%d files use each other in a circle, at most 4: %v", len(knot), knot)
		}
	}
}

// fileUses returns, for each non-test Go file of the package in dir, the
// other files of the package whose names it uses.
func fileUses(t *testing.T, dir string) map[string]map[string]bool {
	fset := token.NewFileSet()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	require.NoError(t, err)
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		require.NoError(t, err)
		if builtHere(f) {
			files = append(files, f)
		}
	}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	pkg, err := conf.Check("keepalive", fset, files, info)
	require.NoError(t, err)
	uses := map[string]map[string]bool{}
	for id, obj := range info.Uses {
		if obj == nil || obj.Pkg() != pkg || !obj.Pos().IsValid() {
			continue
		}
		from := filepath.Base(fset.Position(id.Pos()).Filename)
		to := filepath.Base(fset.Position(obj.Pos()).Filename)
		if from == to {
			continue
		}
		if uses[from] == nil {
			uses[from] = map[string]bool{}
		}
		uses[from][to] = true
	}
	return uses
}

// builtHere reports whether f is built on this (unix) machine: the
// package's only build constraints are unix and !unix.
func builtHere(f *ast.File) bool {
	for _, c := range f.Comments {
		for _, l := range c.List {
			if l.Text == "//go:build !unix" {
				return false
			}
		}
	}
	return true
}

// knots returns the sets of two or more files that all reach each other
// (the strongly connected components of uses), by Tarjan's algorithm.
func knots(uses map[string]map[string]bool) [][]string {
	index, low, on := map[string]int{}, map[string]int{}, map[string]bool{}
	var stack []string
	var out [][]string
	next := 0
	var visit func(v string)
	visit = func(v string) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		on[v] = true
		for w := range uses[v] {
			if _, seen := index[w]; !seen {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if on[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] != index[v] {
			return
		}
		var knot []string
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			on[w] = false
			knot = append(knot, w)
			if w == v {
				break
			}
		}
		if len(knot) > 1 {
			slices.Sort(knot)
			out = append(out, knot)
		}
	}
	files := make([]string, 0, len(uses))
	for f := range uses {
		files = append(files, f)
	}
	slices.Sort(files)
	for _, f := range files {
		if _, seen := index[f]; !seen {
			visit(f)
		}
	}
	return out
}
