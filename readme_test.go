package cache_test

import (
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeSnippetsTypeCheck type-checks every Go snippet of the README
// against this package, so that a snippet a reader pastes does not fail on
// the package's side: a misspelled function, a wrong argument count, a
// variable declared twice with :=, an option that does not exist.
//
// Snippets are fragments: they use names the reader's code defines (ctx,
// m, summary, computeLeaderboard). Errors about those names (undefined,
// declared and not used, a missing return) are ignored; go/types does not
// report errors that follow from an undefined operand, so what is left is
// about the package's API and the snippet's own consistency.
func TestReadmeSnippetsTypeCheck(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	snippets := goSnippets(string(readme))
	if len(snippets) < 15 {
		t.Fatalf("found %d Go snippets in README.md, want at least 15: is the fence still ```go?", len(snippets))
	}
	imp := exportImporter(t)
	for _, s := range snippets {
		for _, msg := range typeCheckSnippet(imp, s.code) {
			// A module of its own in this repository (promcache, ...)
			// is not a dependency of this one: its snippet is checked
			// here for everything but that import.
			if m := otherModuleImport.FindStringSubmatch(msg.text); m != nil {
				if _, err := os.Stat(m[1] + "/go.mod"); err == nil {
					continue
				}
			}
			t.Errorf("README.md:%d: %s", s.line+msg.line, msg.text)
		}
	}
}

// exportImporter imports the packages snippets use from the export data
// the go command builds (and caches), far faster than type-checking them
// from source.
func exportImporter(t *testing.T) types.Importer {
	t.Helper()
	args := append([]string{"list", "-export", "-deps", "-f", "{{.ImportPath}}={{.Export}}"}, snippetImports...)
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list -export: %v", err)
	}
	files := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, file, _ := strings.Cut(line, "=")
		files[path] = file
	}
	return importer.ForCompiler(token.NewFileSet(), "gc", func(path string) (io.ReadCloser, error) {
		file, ok := files[path]
		if !ok || file == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(file)
	})
}

type snippet struct {
	line int // the line of the fence in README.md
	code string
}

var otherModuleImport = regexp.MustCompile(`^could not import github\.com/stockpot-go/cache/(\w+) `)

var fence = regexp.MustCompile("(?m)^```go\n")

// goSnippets returns the ```go blocks of a Markdown text.
func goSnippets(md string) []snippet {
	var out []snippet
	for _, loc := range fence.FindAllStringIndex(md, -1) {
		rest := md[loc[1]:]
		end := strings.Index(rest, "\n```")
		if end < 0 {
			continue
		}
		out = append(out, snippet{line: strings.Count(md[:loc[1]], "\n"), code: rest[:end+1]})
	}
	return out
}

type snippetError struct {
	line int // in the snippet, from 1
	text string
}

// The packages snippets may use without importing them.
var snippetImports = []string{
	"context", "errors", "expvar", "fmt", "log/slog", "net/http", "os", "testing", "time",
	"github.com/redis/go-redis/v9", "github.com/stockpot-go/cache",
	"github.com/stockpot-go/cache/cachetest",
}

// Errors about the reader's own names, which snippets leave undefined.
var ignoredSnippetErrors = regexp.MustCompile(`undefined: |declared and not used|imported and not used|missing return|"[^"]+" imported as \w+ and not used`)

// typeCheckSnippet type-checks code, as a file when it declares functions
// or imports, otherwise as the body of a function, and returns the errors
// that are not about the reader's names.
func typeCheckSnippet(imp types.Importer, code string) []snippetError {
	// "{ ... }" stands for a body the reader writes.
	code = strings.ReplaceAll(code, "{ ... }", "{ panic(0) }")
	var decls, stmts strings.Builder
	var own []string // imports the snippet makes itself
	inImports, inDecl := false, false
	for _, line := range strings.Split(code, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case inImports:
			if trimmed == ")" {
				inImports = false
			} else {
				own = append(own, trimmed)
			}
			line = ""
		case trimmed == "import (":
			inImports = true
			line = ""
		case strings.HasPrefix(trimmed, "import "):
			own = append(own, strings.TrimPrefix(trimmed, "import "))
			line = ""
		case strings.HasPrefix(line, "func ") || strings.HasPrefix(line, "type "):
			// A declaration at the left margin: top level, up to its
			// closing brace at the left margin.
			inDecl = strings.HasSuffix(trimmed, "{") || strings.HasSuffix(trimmed, "(")
			decls.WriteString(line + "\n")
			stmts.WriteString("\n")
			continue
		case inDecl:
			inDecl = line != "}" && line != ")"
			decls.WriteString(line + "\n")
			stmts.WriteString("\n")
			continue
		}
		// Blank lines keep both parts aligned with the snippet's lines.
		decls.WriteString("\n")
		stmts.WriteString(line + "\n")
	}

	var src strings.Builder
	src.WriteString("package snippet\n\nimport (\n")
	for _, p := range snippetImports {
		src.WriteString("\t\"" + p + "\"\n")
	}
	for _, p := range own {
		if !strings.Contains(src.String(), p) {
			src.WriteString("\t" + p + "\n")
		}
	}
	// The declarations at the snippet's own lines, then the statements at
	// theirs, in a function: line numbers map back to the README.
	src.WriteString(")\n")
	// The reader's usual names, typed, so that calls on them are checked.
	src.WriteString("var (\n\tctx context.Context\n\tm   *cache.Manager\n\trdb *redis.Client\n\terr error\n)\n")
	header := strings.Count(src.String(), "\n")
	src.WriteString(decls.String())
	src.WriteString("func _() error {\n")
	stmtHeader := strings.Count(src.String(), "\n")
	src.WriteString(stmts.String())
	src.WriteString("}\n")

	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "snippet.go", src.String(), parser.SkipObjectResolution)
	if err != nil {
		return []snippetError{{text: "does not parse: " + err.Error() + "\n" + src.String()}}
	}
	line := func(pos token.Pos) int {
		l := fset.Position(pos).Line
		if l > stmtHeader {
			return l - stmtHeader
		}
		return l - header
	}
	var out []snippetError
	undefined := map[string]int{} // the reader's names, at their first use
	conf := types.Config{Importer: imp, Error: func(err error) {
		te := err.(types.Error)
		if name, ok := strings.CutPrefix(te.Msg, "undefined: "); ok {
			if _, seen := undefined[name]; !seen {
				undefined[name] = line(te.Pos)
			}
		}
		if ignoredSnippetErrors.MatchString(te.Msg) {
			return
		}
		out = append(out, snippetError{line: line(te.Pos), text: te.Msg})
	}}
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}}
	pkg, _ := conf.Check("snippet", fset, []*ast.File{f}, info)
	for id, obj := range info.Uses { // the usual names, used before a := of them
		if obj.Parent() == pkg.Scope() && fset.Position(obj.Pos()).Line <= header && id.Pos() > obj.Pos() {
			if first, ok := undefined[id.Name]; !ok || line(id.Pos()) < first {
				undefined[id.Name] = line(id.Pos())
			}
		}
	}
	// Names the snippet uses undefined are the reader's, declared before
	// the snippet in the same scope: a := of the snippet's top level whose
	// every name is one of them declares nothing new once pasted.
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "_" {
			continue
		}
		for _, st := range fn.Body.List {
			as, ok := st.(*ast.AssignStmt)
			if !ok || as.Tok != token.DEFINE {
				continue
			}
			fresh := false
			for _, lhs := range as.Lhs {
				id, ok := lhs.(*ast.Ident)
				first, used := undefined[id.Name]
				if ok && id.Name != "_" && (!used || first >= line(id.Pos())) {
					fresh = true
				}
			}
			if !fresh {
				out = append(out, snippetError{line: line(as.Pos()),
					text: "no new variables on the left of := once pasted: each is used above it in the snippet, so the reader has it already"})
			}
		}
	}
	return out
}

// TestTypeCheckSnippetCatches checks that the README check fails on the
// mistakes it is for, and passes the fragments the README is made of.
func TestTypeCheckSnippetCatches(t *testing.T) {
	imp := exportImporter(t)
	for _, c := range []struct {
		name, code string
		bad        bool
	}{
		{"fragment", "err = m.Set(ctx, \"k\", v, cache.TTL(time.Hour))\ns, err := cache.Get[Summary](ctx, m, \"k\")\n", false},
		{"declarations and statements", "type Q struct{ A int }\n\nfunc load(ctx context.Context, q Q) (int, error) { return q.A, nil }\n\nmemo := cache.Memoize(m, \"q\", load)\n", false},
		{"no such function", "err = cache.SetTTL(ctx, m, \"k\")\n", true},
		{"no such option field", "m, err := cache.New(rdb, &cache.Options{Prefx: \"p\"})\n", true},
		{"wrong argument count", "err = m.Set(ctx, \"k\")\n", true},
		{"redeclared once pasted", "err = h.Set(ctx, \"f\", om)\nom, err := h.Get(ctx, \"f\")\n", true},
		{"placeholder body", "f := func(ctx context.Context) (int, error) { ... }\n", false},
	} {
		errs := typeCheckSnippet(imp, c.code)
		if got := len(errs) > 0; got != c.bad {
			t.Errorf("%s: errors %v, want errors: %v", c.name, errs, c.bad)
		}
	}
}
