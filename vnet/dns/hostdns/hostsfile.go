package hostdns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// DefaultHostsPath is the system hosts file.
const DefaultHostsPath = "/etc/hosts"

// HostsFile keeps one cluster's block in a hosts file. Every change reads
// the file, replaces or removes the block and writes the file back
// atomically (a temporary file in the same directory, renamed over it),
// keeping its mode and owner; lines outside the block are never changed.
// Writers of the same directory are serialized by an flock on the
// directory, so two pvcd (two clusters) on one host do not lose each
// other's block. Safe for concurrent use.
type HostsFile struct {
	path    string
	cluster string
	domain  string
	mu      sync.Mutex // serializes this process's rewrites
}

// NewHostsFile returns the manager of cluster's block, listing names under
// domain, in the hosts file at path (DefaultHostsPath if empty).
func NewHostsFile(path, cluster, domain string) (*HostsFile, error) {
	if path == "" {
		path = DefaultHostsPath
	}
	if _, err := RenderBlock(cluster, domain, nil); err != nil {
		return nil, err
	}
	return &HostsFile{path: path, cluster: cluster, domain: domain}, nil
}

// Mode implements Integration.
func (h *HostsFile) Mode() string { return "hosts" }

// Apply implements Integration: it writes the block listing hosts,
// replacing any block of the cluster (a crashed run's included). The file
// is not rewritten when nothing changes.
func (h *HostsFile) Apply(ctx context.Context, hosts []Host) error {
	err := h.edit(ctx, func(f *File) error { return f.SetBlock(h.cluster, h.domain, hosts) })
	if err != nil {
		return fmt.Errorf("hosts file %s: write block of %s: %w", h.path, h.cluster, err)
	}
	return nil
}

// Undo implements Integration: it removes the cluster's block. A missing
// file or block is no error.
func (h *HostsFile) Undo(ctx context.Context) error {
	err := h.edit(ctx, func(f *File) error {
		f.RemoveBlock(h.cluster)
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hosts file %s: remove block of %s: %w", h.path, h.cluster, err)
	}
	return nil
}

// edit applies change to the parsed file and writes the result if it
// differs from what was read.
func (h *HostsFile) edit(ctx context.Context, change func(*File) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// Write through a symlink to its target: the link stays a link.
	path, err := filepath.EvalSymlinks(h.path)
	if errors.Is(err, fs.ErrNotExist) {
		path = h.path
	} else if err != nil {
		return err
	}
	unlock, err := lockDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer unlock()
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := Parse(old)
	if err != nil {
		return err
	}
	if err := change(f); err != nil {
		return err
	}
	data := f.Bytes()
	if string(data) == string(old) {
		return nil
	}
	return writeAtomic(path, data)
}

// writeAtomic replaces path by data: temporary file, fsync, rename. The
// file keeps its mode and (when allowed) its owner; a new file gets 0644.
// When path cannot be replaced by rename (a bind-mounted /etc/hosts, as in
// containers: EBUSY), it is rewritten in place instead.
func writeAtomic(path string, data []byte) error {
	mode := fs.FileMode(0o644)
	uid, gid := -1, -1
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".pvc-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		// Only root may give a file away; others keep their own files.
		if err := tmp.Chown(uid, gid); err != nil && !errors.Is(err, fs.ErrPermission) {
			return err
		}
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
			return err
		}
		os.Remove(tmp.Name())
		done = true
		return os.WriteFile(path, data, mode)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename is durable once the directory is
		d.Close()
	}
	return nil
}

// lockDir takes an exclusive flock on the directory dir (no lock file is
// created) and returns its release.
func lockDir(dir string) (func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(d.Fd()), syscall.LOCK_UN)
		d.Close()
	}, nil
}
