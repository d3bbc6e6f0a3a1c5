package agent

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The agent checks the same ID rule as the API and the workflows: an id the control plane would refuse is
// refused here too (it once allowed 200 characters where everything else allowed 128).
func TestAgentChecksTheOneIDRule(t *testing.T) {
	assert.NoError(t, checkID("volume_id", strings.Repeat("v", 128)))
	assert.Error(t, checkID("volume_id", strings.Repeat("v", 129)))
	assert.Error(t, checkID("volume_id", ".hidden"))
}
