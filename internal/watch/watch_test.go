package watch

import "testing"

func TestSetCallsWhatIsRegistered(t *testing.T) {
	var w Set[string]
	var got []string
	remove := w.Add(func(s string) { got = append(got, "a:"+s) })
	w.Add(func(s string) { got = append(got, "b:"+s) })
	w.Notify("x")
	remove()
	w.Notify("y")
	if len(got) != 3 || got[2] != "b:y" {
		t.Fatalf("calls: %v", got)
	}
}
