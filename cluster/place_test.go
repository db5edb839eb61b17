package cluster

import (
	"reflect"
	"testing"

	"github.com/sfvmm/sfvmm/cluster/agentapi"
)

func TestPlace(t *testing.T) {
	free := map[string]int{"a": 4, "b": 4, "c": 1, "d": 0}
	if got, want := place(free, 5, agentapi.Spread), []string{"a", "b", "a", "b", "a"}; !reflect.DeepEqual(got, want) {
		t.Errorf("spread 5: %v, want %v", got, want)
	}
	if got, want := place(free, 6, agentapi.Pack), []string{"a", "a", "a", "a", "b", "b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("pack 6: %v, want %v", got, want)
	}
	if got := place(free, 20, agentapi.Spread); len(got) != 9 {
		t.Errorf("spread 20 over 9 free slots: %d placed", len(got))
	}
	if got := place(map[string]int{"a": -2}, 3, agentapi.Spread); len(got) != 0 {
		t.Errorf("over-reserved host: %v", got)
	}
}
