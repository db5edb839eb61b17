package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// suiteApt is a private apt configuration that reads one other suite of
// the Debian archive this machine already uses (trixie on a bookworm
// host), so that kvmbox can fetch that suite's packages without touching
// the host's apt sources, package lists or installed packages. Its
// package lists live under dir; apt-get runs with APT_CONFIG pointing at
// it.
type suiteApt struct {
	suite string
	dir   string
}

// The host's apt configuration, read for the archive's address.
const (
	aptSourcesList  = "/etc/apt/sources.list"
	aptSourcesParts = "/etc/apt/sources.list.d"
	debianKeyring   = "/usr/share/keyrings/debian-archive-keyring.gpg"
)

// newSuiteApt writes the private configuration for suite under dir. The
// archive's address comes from the host's own sources (the entry for the
// host's release), never from kvmbox: machines reach Debian through
// different mirrors.
func newSuiteApt(dir, suite string) (*suiteApt, error) {
	uri, err := hostDebianArchive()
	if err != nil {
		return nil, err
	}
	a := &suiteApt{suite: suite, dir: dir}
	for _, d := range []string{"etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d", "etc/trusted.gpg.d",
		"state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// An empty dpkg status: apt then resolves every dependency down to
	// libc, which is what an unpacked private root needs.
	files := map[string]string{
		"state/status":     "",
		"etc/sources.list": fmt.Sprintf("deb [signed-by=%s] %s %s main\n", debianKeyring, uri, suite),
		"apt.conf": strings.Join([]string{
			`Dir::Etc "` + filepath.Join(dir, "etc") + `";`,
			`Dir::State "` + filepath.Join(dir, "state") + `";`,
			`Dir::State::status "` + filepath.Join(dir, "state", "status") + `";`,
			`Dir::Cache "` + filepath.Join(dir, "cache") + `";`,
			`APT::Architecture "amd64";`,
			`APT::Architectures { "amd64"; };`,
			`APT::Install-Recommends "false";`,
			`Acquire::Languages "none";`,
		}, "\n") + "\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// env is apt's environment for this configuration.
func (a *suiteApt) env() []string {
	return []string{"APT_CONFIG=" + filepath.Join(a.dir, "apt.conf")}
}

// update fetches the suite's package lists.
func (a *suiteApt) update() error {
	_, err := runOutputEnv("", a.env(), "apt-get", "update")
	return err
}

// hostDebianArchive returns the address of the Debian archive in the
// host's apt sources: the entry whose suite is the host's own release
// (bookworm), in the one-line or the deb822 format.
func hostDebianArchive() (string, error) {
	codename, err := hostCodename()
	if err != nil {
		return "", err
	}
	files := []string{aptSourcesList}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(aptSourcesParts, pat))
		files = append(files, m...)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		parse := parseOneLineSources
		if strings.HasSuffix(f, ".sources") {
			parse = parseDeb822Sources
		}
		for _, s := range parse(string(data)) {
			if s.has(codename) {
				return s.uri, nil
			}
		}
	}
	return "", fmt.Errorf("no apt source for Debian %s in %s or %s", codename, aptSourcesList, aptSourcesParts)
}

// aptSource is one deb entry: an archive and the suites it serves.
type aptSource struct {
	uri    string
	suites []string
}

func (s aptSource) has(suite string) bool {
	for _, x := range s.suites {
		if x == suite {
			return true
		}
	}
	return false
}

// parseOneLineSources reads sources.list lines: "deb [opts] URI SUITE COMP...".
func parseOneLineSources(text string) []aptSource {
	var out []aptSource
	for _, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 {
			out = append(out, aptSource{uri: f[0], suites: f[1:2]})
		}
	}
	return out
}

// parseDeb822Sources reads a .sources file: stanzas of "Field: value"
// lines separated by blank lines.
func parseDeb822Sources(text string) []aptSource {
	var out []aptSource
	fields := map[string]string{}
	flush := func() {
		if strings.Contains(" "+fields["types"]+" ", " deb ") && fields["enabled"] != "no" {
			for _, uri := range strings.Fields(fields["uris"]) {
				out = append(out, aptSource{uri: uri, suites: strings.Fields(fields["suites"])})
			}
		}
		fields = map[string]string{}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

// hostCodename is VERSION_CODENAME from /etc/os-release.
func hostCodename() (string, error) {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			if v = strings.Trim(v, `"`); v != "" {
				return v, nil
			}
		}
	}
	return "", errors.New("/etc/os-release has no VERSION_CODENAME: not a Debian release kvmbox knows")
}
