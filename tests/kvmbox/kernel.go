package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/sfvmm/sfvmm/vmm/boot"
	"github.com/xi2/xz"
)

// kernel is a Debian linux-image package unpacked into the cache.
type kernel struct {
	Package string // linux-image-6.1.0-NN-amd64
	Release string // 6.1.0-NN-amd64, the directory under lib/modules
	Dir     string // where dpkg -x put it
	Vmlinuz string // absolute path of boot/vmlinuz-<Release>
}

// ModDir is the module tree, lib/modules/<release>, or usr/lib/modules in
// packages of a merged-/usr release (Debian 13).
func (k *kernel) ModDir() string {
	d := filepath.Join(k.Dir, "lib", "modules", k.Release)
	if usr := filepath.Join(k.Dir, "usr", "lib", "modules", k.Release); !exists(d) && exists(usr) {
		return usr
	}
	return d
}

var kernelPkgRE = regexp.MustCompile(`linux-image-(\d[\w.+-]*-amd64)\b`)

// currentKernelPackage asks apt (the host's, or a private one for another
// suite when env names its configuration) which linux-image-<release>-amd64
// the linux-image-amd64 metapackage pulls in today.
func currentKernelPackage(env []string) (string, error) {
	out, err := runOutputEnv("", env, "apt-cache", "depends", "linux-image-amd64")
	if err == nil {
		for _, line := range strings.Split(out, "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "Depends:") {
				continue
			}
			if m := kernelPkgRE.FindString(line); m != "" {
				return m, nil
			}
		}
		err = fmt.Errorf("no linux-image-*-amd64 dependency in:\n%s", out)
	}
	return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w", err)
}

// ensureKernel returns the unpacked kernel package, downloading it with
// apt-get download and unpacking it with dpkg -x on first use. pkg may be
// empty, meaning the one linux-image-amd64 depends on. The cache holds one
// directory per package version, so a newer Debian kernel is fetched when
// the metapackage moves on. apt is nil for the host's own suite, or a
// private configuration for another one.
func ensureKernel(cache, pkg string, apt *suiteApt) (*kernel, error) {
	current := filepath.Join(cache, "kernel", "current")
	var aptEnv []string
	if apt != nil {
		current += "-" + apt.suite
		aptEnv = apt.env()
	}
	aptUpdate := func() error {
		if apt != nil {
			return apt.update()
		}
		_, err := runOutput("apt-get", "update")
		return err
	}
	if pkg == "" {
		// Asking apt costs more than a second on a busy machine; its
		// answer changes only with a Debian point release, so reuse it
		// for a while.
		if st, err := os.Stat(current); err == nil && time.Since(st.ModTime()) < 12*time.Hour {
			data, _ := os.ReadFile(current)
			p := strings.TrimSpace(string(data))
			if _, err := os.Stat(filepath.Join(cache, "kernel", p, ".complete")); err == nil {
				pkg = p
			}
		}
	}
	if pkg == "" {
		p, err := currentKernelPackage(aptEnv)
		if err != nil && isRoot() {
			// Fresh machines often have no package lists yet.
			if uerr := aptUpdate(); uerr == nil {
				p, err = currentKernelPackage(aptEnv)
			}
		}
		if err != nil {
			// Offline or not Debian: fall back to whatever is cached.
			if k := newestCachedKernel(cache); k != nil && apt == nil {
				warnf("could not ask apt for the current kernel (%v); using cached %s", err, k.Package)
				return k, nil
			}
			return nil, fmt.Errorf("find kernel package: %w", err)
		}
		pkg = p
		if err := os.WriteFile(current, []byte(pkg+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	m := kernelPkgRE.FindStringSubmatch(pkg)
	if m == nil || m[0] != pkg {
		return nil, fmt.Errorf("kernel package %q is not of the form linux-image-<release>-amd64", pkg)
	}
	k := &kernel{Package: pkg, Release: m[1], Dir: filepath.Join(cache, "kernel", pkg)}
	k.Vmlinuz = filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release)
	if _, err := os.Stat(filepath.Join(k.Dir, ".complete")); err == nil {
		return k, nil
	}

	logf("fetching %s with apt-get download (first run only)", pkg)
	dl, err := os.MkdirTemp(filepath.Join(cache, "kernel"), ".dl-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dl)
	if _, err := runOutputEnv(dl, aptEnv, "apt-get", "download", pkg); err != nil {
		if !isRoot() {
			return nil, fmt.Errorf("apt-get download %s: %w", pkg, err)
		}
		if uerr := aptUpdate(); uerr != nil {
			return nil, fmt.Errorf("apt-get download %s: %w (apt-get update failed too: %v)", pkg, err, uerr)
		}
		if _, err := runOutputEnv(dl, aptEnv, "apt-get", "download", pkg); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %w", pkg, err)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", pkg, dl, len(debs))
	}
	tmp := filepath.Join(dl, "root")
	if _, err := runOutput("dpkg", "-x", debs[0], tmp); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	tk := *k
	tk.Dir = tmp
	if err := unpackModules(tk.ModDir()); err != nil {
		return nil, fmt.Errorf("unpack modules of %s: %w", pkg, err)
	}
	if err := writeModulesDep(tk.ModDir()); err != nil {
		return nil, fmt.Errorf("index modules of %s: %w", pkg, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return nil, err
	}
	os.RemoveAll(k.Dir) // a half-finished earlier attempt
	if err := os.Rename(tmp, k.Dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return nil, fmt.Errorf("%s has no kernel image: %w", pkg, err)
	}
	return k, nil
}

func newestCachedKernel(cache string) *kernel {
	done, _ := filepath.Glob(filepath.Join(cache, "kernel", "linux-image-*", ".complete"))
	sort.Strings(done)
	for i := len(done) - 1; i >= 0; i-- {
		pkg := filepath.Base(filepath.Dir(done[i]))
		m := kernelPkgRE.FindStringSubmatch(pkg)
		if m == nil {
			continue
		}
		k := &kernel{Package: pkg, Release: m[1], Dir: filepath.Dir(done[i])}
		k.Vmlinuz = filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release)
		return k
	}
	return nil
}

// modName is the kernel's name for a module file: kvm-amd.ko is kvm_amd.
func modName(file string) string {
	base := filepath.Base(file)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(base, ext) {
			base = strings.TrimSuffix(base, ext)
			break
		}
	}
	return strings.ReplaceAll(base, "-", "_")
}

// parseModinfo extracts the depends= list from the contents of a module's
// .modinfo section (NUL-separated key=value strings).
func parseModinfo(sec []byte) (depends []string) {
	for _, kv := range bytes.Split(sec, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			for _, d := range strings.Split(string(v), ",") {
				depends = append(depends, modName(d))
			}
		}
	}
	return depends
}

// writeModulesDep writes modules.dep for a module tree, in depmod's format
// ("kernel/a.ko: kernel/b.ko ...", dependencies listed so that loading them
// back to front works), from each module's .modinfo. Debian's package
// leaves modules.dep to depmod at install time, and kmod is not needed
// here otherwise. Compressed modules must have been unpacked first
// (unpackModules): busybox insmod cannot read them.
func writeModulesDep(modDir string) error {
	direct := map[string][]string{} // module name -> names it depends on
	path := map[string]string{}     // module name -> path relative to modDir
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !strings.HasSuffix(p, ".ko") {
			if strings.Contains(d.Name(), ".ko.") {
				return fmt.Errorf("%s: compressed modules are not supported", p)
			}
			return nil
		}
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		sec := f.Section(".modinfo")
		if sec == nil {
			return fmt.Errorf("%s: no .modinfo section", p)
		}
		data, err := sec.Data()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		rel, _ := filepath.Rel(modDir, p)
		name := modName(p)
		path[name] = rel
		direct[name] = parseModinfo(data)
		return nil
	})
	if err != nil {
		return err
	}
	names := make([]string, 0, len(path))
	for n := range path {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		order, err := loadOrder(direct, []string{n})
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s:", path[n])
		// order ends with n itself, dependencies first; depmod lists them
		// the other way round.
		for i := len(order) - 2; i >= 0; i-- {
			fmt.Fprintf(&b, " %s", path[order[i]])
		}
		b.WriteByte('\n')
	}
	return os.WriteFile(filepath.Join(modDir, "modules.dep"), []byte(b.String()), 0o644)
}

// loadOrder returns roots and everything they depend on, each module after
// its dependencies.
func loadOrder(deps map[string][]string, roots []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(n string, from string) error
	visit = func(n, from string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle through %s", n)
		case 2:
			return nil
		}
		d, ok := deps[n]
		if !ok {
			if from == "" {
				return fmt.Errorf("no module named %s", n)
			}
			return fmt.Errorf("module %s needs %s, which does not exist", from, n)
		}
		state[n] = 1
		for _, dep := range d {
			if err := visit(dep, n); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, n)
		return nil
	}
	for _, r := range roots {
		if err := visit(modName(r), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// unpackModules replaces each xz-compressed module under modDir
// (foo.ko.xz, as Debian 13 ships them) with the plain foo.ko that busybox
// insmod and debug/elf read.
func unpackModules(modDir string) error {
	return filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".ko.xz") {
			return err
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		r, err := xz.NewReader(in, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out := strings.TrimSuffix(p, ".xz")
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Remove(p)
	})
}

// readModulesDep reads a modules.dep written by writeModulesDep (or
// depmod) back into direct-enough dependency lists and paths.
func readModulesDep(modDir string) (deps map[string][]string, paths map[string]string, err error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	deps, paths = map[string][]string{}, map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(file)
		paths[n] = filepath.Join(modDir, file)
		var d []string
		for _, f := range strings.Fields(rest) {
			d = append(d, modName(f))
		}
		// The list is transitive; depending on all of it, reversed, keeps
		// the order depmod intended.
		for i, j := 0, len(d)-1; i < j; i, j = i+1, j-1 {
			d[i], d[j] = d[j], d[i]
		}
		deps[n] = d
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(paths) == 0 {
		return nil, nil, errors.New("empty modules.dep in " + modDir)
	}
	return deps, paths, nil
}

// modulePaths resolves module names to absolute .ko paths in load order.
// Modules built into the kernel (modules.builtin: Debian 13 builds virtio
// PCI in) need no loading and are left out.
func (k *kernel) modulePaths(names []string) ([]string, error) {
	deps, paths, err := readModulesDep(k.ModDir())
	if err != nil {
		return nil, err
	}
	builtin := readBuiltin(k.ModDir())
	for n := range builtin {
		if _, ok := deps[n]; !ok {
			deps[n] = nil
		}
	}
	order, err := loadOrder(deps, names)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range order {
		if !builtin[n] {
			out = append(out, paths[n])
		}
	}
	return out, nil
}

// readBuiltin returns the names of the modules built into the kernel; a
// tree without modules.builtin has none.
func readBuiltin(modDir string) map[string]bool {
	data, _ := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	names := map[string]bool{}
	for _, l := range strings.Fields(string(data)) {
		names[modName(l)] = true
	}
	return names
}

// ensureVmlinux unpacks the kernel proper from the bzImage into
// <Dir>/vmlinux, an ELF file with a PVH entry note (Debian sets
// CONFIG_PVH). QEMU boots that directly, which skips the in-guest
// decompression: under TCG, unpacking the xz payload takes longer than the
// rest of the boot (about 6 s to init with vmlinuz, 2.5 s with vmlinux).
func (k *kernel) ensureVmlinux() (string, error) {
	out := filepath.Join(k.Dir, "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	img, err := os.Open(k.Vmlinuz)
	if err != nil {
		return "", err
	}
	defer img.Close()
	st, err := img.Stat()
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(k.Dir, "vmlinux.tmp*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := boot.Unpack(img, st.Size(), tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("%s: %w", k.Vmlinuz, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return out, os.Rename(tmp.Name(), out)
}
