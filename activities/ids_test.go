package activities_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/holdfast/holdfast/activities"
)

func TestValidIDIsTheAPIsRule(t *testing.T) {
	for id, want := range map[string]bool{
		"vol1": true, "op-0123abcd": true, "a.b_c-d": true, strings.Repeat("x", 128): true,
		"": false, strings.Repeat("x", 129): false, ".hidden": false, "-dash": false, "a/b": false,
		"../x": false, "a b": false, "é": false, "a\x00": false, "a'": false,
	} {
		assert.Equal(t, want, activities.ValidID(id), "%q", id)
	}
}
