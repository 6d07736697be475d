package terraform

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
)

// Every .tf file is formatted as `terraform fmt` writes it (hclwrite.Format
// is the formatter terraform fmt runs), so CI needs no terraform binary.
func TestEveryFile_IsTerraformFormatted(t *testing.T) {
	for _, d := range dirs(t) {
		m := load(t, d)
		for f, src := range m.src {
			if got := hclwrite.Format(src); !bytes.Equal(got, src) {
				t.Errorf("%s is not formatted as terraform fmt would write it; run terraform fmt -recursive terraform (first differing line: %s)", f, firstDiff(src, got))
			}
		}
	}
}

func firstDiff(a, b []byte) string {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return fmt.Sprintf("%d: %q, want %q", i+1, la[i], lb[i])
		}
	}
	return "at the end"
}

var snake = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// The rules of tflint's recommended preset that apply to these modules,
// checked in Go (so CI need not build tflint): typed variables, a required
// Terraform version, versioned required providers for every provider used
// and none unused, no unused variables, locals or data sources, no
// interpolation-only expressions ("${var.x}"), and snake_case names.
func TestEveryModule_FollowsTheLintRules(t *testing.T) {
	for _, d := range dirs(t) {
		m := load(t, d)
		// Every traversal root and attribute path the module references.
		used := map[string]bool{}
		for _, b := range m.blocks {
			hclsyntax.VisitAll(b.Body, func(n hclsyntax.Node) hcl.Diagnostics {
				e, ok := n.(hclsyntax.Expression)
				if !ok {
					return nil
				}
				for _, tr := range e.Variables() {
					parts := []string{tr.RootName()}
					for _, step := range tr[1:] {
						if a, ok := step.(hcl.TraverseAttr); ok && len(parts) < 3 {
							parts = append(parts, a.Name)
						}
					}
					for i := 1; i <= len(parts); i++ {
						used[strings.Join(parts[:i], ".")] = true
					}
				}
				if tpl, ok := e.(*hclsyntax.TemplateWrapExpr); ok {
					t.Errorf("%s: interpolation-only expression %q: write the expression without \"${}\"", d, text(m, tpl.Range()))
				}
				return nil
			})
		}
		for _, b := range m.find("variable") {
			name := b.Labels[0]
			if _, ok := b.Body.Attributes["type"]; !ok {
				t.Errorf("%s: variable %q has no type", d, name)
			}
			if !used["var."+name] {
				t.Errorf("%s: variable %q is declared but not used", d, name)
			}
		}
		for _, b := range m.find("locals") {
			for name := range b.Body.Attributes {
				if !used["local."+name] {
					t.Errorf("%s: local %q is declared but not used", d, name)
				}
			}
		}
		for _, b := range m.find("data") {
			if !used["data."+b.Labels[0]+"."+b.Labels[1]] {
				t.Errorf("%s: data %s.%s is declared but not used", d, b.Labels[0], b.Labels[1])
			}
		}
		for _, typ := range []string{"resource", "data", "variable", "output", "module"} {
			for _, b := range m.find(typ) {
				if l := b.Labels[len(b.Labels)-1]; !snake.MatchString(l) {
					t.Errorf("%s: %s name %q is not snake_case", d, typ, l)
				}
			}
		}
		for _, b := range m.find("locals") {
			for name := range b.Body.Attributes {
				if !snake.MatchString(name) {
					t.Errorf("%s: local %q is not snake_case", d, name)
				}
			}
		}
		// Providers used (resource and data types' prefixes) against the
		// required_providers block.
		usedProviders := map[string]bool{}
		for _, typ := range []string{"resource", "data"} {
			for _, b := range m.find(typ) {
				if p, _, ok := strings.Cut(b.Labels[0], "_"); ok {
					usedProviders[p] = true
				}
			}
		}
		isRoot := strings.HasPrefix(filepath.ToSlash(d), "examples/")
		tfs := m.find("terraform")
		if len(tfs) == 0 {
			if len(usedProviders) > 0 || len(m.find("module")) > 0 {
				t.Errorf("%s: no terraform block (required_version, required_providers)", d)
			}
			continue
		}
		if _, ok := tfs[0].Body.Attributes["required_version"]; !ok {
			t.Errorf("%s: the terraform block has no required_version", d)
		}
		required := map[string]bool{}
		for _, c := range tfs[0].Body.Blocks {
			if c.Type != "required_providers" {
				continue
			}
			for name, a := range c.Body.Attributes {
				required[name] = true
				if !strings.Contains(text(m, a.Expr.Range()), "version") {
					t.Errorf("%s: provider %q has no version constraint", d, name)
				}
			}
		}
		for p := range usedProviders {
			if !required[p] {
				t.Errorf("%s: provider %q is used but not in required_providers", d, p)
			}
		}
		for p := range required {
			if !usedProviders[p] && !isRoot {
				t.Errorf("%s: provider %q is required but not used", d, p)
			}
		}
	}
}

// text is the source of a range.
func text(m *module, r hcl.Range) string { return string(r.SliceBytes(m.src[r.Filename])) }
