package rbd

import (
	"errors"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// errno is an error with librbd's negative errno code, as go-ceph's errors carry it.
type errno int

func (e errno) Error() string  { return syscall.Errno(-int(e)).Error() }
func (e errno) ErrorCode() int { return int(e) }

// racedSnapshot is a parent snapshot another host's restores protect and unprotect around ours: each entry
// of protectRaces says whether the other host protects it just before our Protect (ours then answers EBUSY);
// each entry of unprotectRaces whether it unprotects it between our protect and our clone.
type racedSnapshot struct {
	protected      bool
	protectRaces   []bool
	unprotectRaces []bool
	clones         int
}

func (s *racedSnapshot) IsProtected() (bool, error) { return s.protected, nil }

func (s *racedSnapshot) Protect() error {
	race := len(s.protectRaces) > 0 && s.protectRaces[0]
	if len(s.protectRaces) > 0 {
		s.protectRaces = s.protectRaces[1:]
	}
	if race || s.protected {
		s.protected = true
		return errno(-int(syscall.EBUSY))
	}
	s.protected = true
	return nil
}

func (s *racedSnapshot) clone() error {
	s.clones++
	if len(s.unprotectRaces) > 0 {
		race := s.unprotectRaces[0]
		s.unprotectRaces = s.unprotectRaces[1:]
		if race {
			s.protected = false
		}
	}
	if !s.protected {
		return errno(-int(syscall.EINVAL)) // librbd: a format-1 clone's parent must be protected
	}
	return nil
}

// Another host protecting the snapshot at the same moment (EBUSY), or unprotecting it between our protect
// and our clone (EINVAL), costs a retry, not the restore.
func TestCloneProtectedRaces(t *testing.T) {
	s := &racedSnapshot{protectRaces: []bool{true}}
	require.NoError(t, cloneProtected(s, "p/i@s", s.clone))
	require.Equal(t, 1, s.clones)

	s = &racedSnapshot{unprotectRaces: []bool{true, true, false}}
	require.NoError(t, cloneProtected(s, "p/i@s", s.clone))
	require.Equal(t, 3, s.clones)

	// Bounded: a snapshot unprotected under every attempt fails the restore with librbd's error.
	s = &racedSnapshot{unprotectRaces: []bool{true, true, true, true, true, true}}
	err := cloneProtected(s, "p/i@s", s.clone)
	require.True(t, isErrno(err, -int(syscall.EINVAL)), "%v", err)
	require.Equal(t, cloneAttempts, s.clones)

	// A protect that fails for good, and a clone invalid with its parent protected, are not retried.
	broken := errors.New("permission denied")
	f := &failingProtect{err: broken}
	require.ErrorIs(t, cloneProtected(f, "p/i@s", func() error { t.Fatal("cloned"); return nil }), broken)
	s = &racedSnapshot{protected: true}
	err = cloneProtected(s, "p/i@s", func() error { s.clones++; return errno(-int(syscall.EINVAL)) })
	require.Error(t, err)
	require.Equal(t, 1, s.clones)
}

type failingProtect struct{ err error }

func (f *failingProtect) IsProtected() (bool, error) { return false, nil }
func (f *failingProtect) Protect() error             { return f.err }
