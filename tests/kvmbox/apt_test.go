package main

import (
	"reflect"
	"testing"
)

func TestParseSources(t *testing.T) {
	oneLine := `# comment
deb http://mirror.example/debian bookworm main contrib
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian-security bookworm-security main
deb-src http://mirror.example/debian bookworm main
deb [ broken
`
	if got, want := parseOneLineSources(oneLine), []aptSource{
		{uri: "http://mirror.example/debian", suites: []string{"bookworm"}},
		{uri: "http://mirror.example/debian-security", suites: []string{"bookworm-security"}},
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("one-line: got %+v, want %+v", got, want)
	}
	deb822 := `Types: deb
# a comment line
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no
`
	got := parseDeb822Sources(deb822)
	if want := []aptSource{{uri: "http://mirror.example/debian", suites: []string{"bookworm", "bookworm-updates"}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("deb822: got %+v, want %+v", got, want)
	}
	if !got[0].has("bookworm") || got[0].has("trixie") {
		t.Errorf("has: wrong answer for %+v", got[0])
	}
}
