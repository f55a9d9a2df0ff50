package mcp

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/go-json-experiment/json/jsontext"
)

// ListKind describes a list whose items the gateway filters.
type ListKind struct {
	Method  string // the list method, e.g. tools/list
	Items   string // result member holding the array
	NameKey string // member of an item that names it
	Action  string // the action using an item (for policy)
}

// Lists are filtered wherever they appear in a result, whichever request
// the result answers and whichever stream carries it: a list answer
// replayed on a GET stream, or answering an id the gateway did not see,
// is filtered all the same.
var Lists = []ListKind{
	{"tools/list", "tools", "name", "tools/call"},
	{"prompts/list", "prompts", "name", "prompts/get"},
	{"resources/list", "resources", "uri", "resources/read"},
	{"resources/templates/list", "resourceTemplates", "uriTemplate", "resources/read"},
}

var listMembers = func() []string {
	var out []string
	for _, k := range Lists {
		out = append(out, k.Items)
	}
	return out
}()

func listKind(member string) (ListKind, bool) {
	for _, k := range Lists {
		if k.Items == member {
			return k, true
		}
	}
	return ListKind{}, false
}

// FilterLists removes from a result object the list items that keep
// rejects, in every list member it has (tools, prompts, resources,
// resourceTemplates), and leaves every other member (nextCursor, _meta,
// ...) as it was. An item without a string name, or with its name member
// spelled in another letter case, is removed. A result that is not an
// object holds no list and is returned as it is; so is a result from which
// nothing was removed. removed counts the items taken out.
func FilterLists(result json.RawMessage, keep func(k ListKind, name string) bool) (out json.RawMessage, removed int, err error) {
	if len(result) == 0 || result[0] != '{' {
		return result, 0, nil
	}
	type member struct {
		name  string
		value []byte
	}
	var members []member
	dec := jsontext.NewDecoder(bytes.NewReader(result))
	if _, err := dec.ReadToken(); err != nil {
		return nil, 0, err
	}
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, 0, err
		}
		name := tok.String()
		if known := foldMatch(name, listMembers); known != "" && known != name {
			return nil, 0, fmt.Errorf("the result member %q differs only in letter case from %q", name, known)
		}
		v, err := readValue(dec, result)
		if err != nil {
			return nil, 0, err
		}
		value := []byte(v)
		if k, ok := listKind(name); ok {
			var n int
			if value, n, err = filterItems(v, k, keep); err != nil {
				return nil, 0, err
			}
			removed += n
		}
		members = append(members, member{name, value})
	}
	if removed == 0 {
		return result, 0, nil
	}
	b := append(make([]byte, 0, len(result)), '{')
	for i, m := range members {
		if i > 0 {
			b = append(b, ',')
		}
		b, _ = jsontext.AppendQuote(b, m.name)
		b = append(b, ':')
		b = append(b, m.value...)
	}
	return append(b, '}'), removed, nil
}

// filterItems keeps the items of one list array.
func filterItems(arr jsontext.Value, k ListKind, keep func(ListKind, string) bool) ([]byte, int, error) {
	if arr.Kind() != '[' {
		return nil, 0, fmt.Errorf("%s result.%s is not an array", k.Method, k.Items)
	}
	dec := jsontext.NewDecoder(bytes.NewReader(arr))
	dec.ReadToken()
	b := []byte{'['}
	removed := 0
	for dec.PeekKind() != ']' {
		item, err := readValue(dec, arr)
		if err != nil {
			return nil, 0, err
		}
		if name, ok := itemName(item, k.NameKey); ok && keep(k, name) {
			if len(b) > 1 {
				b = append(b, ',')
			}
			b = append(b, item...)
		} else {
			removed++
		}
	}
	if removed == 0 {
		return arr, 0, nil
	}
	return append(b, ']'), removed, nil
}

// itemName reads the name member of a list item; ok is false when the
// item is not an object, its name is not a string, or a member spells the
// name key in another letter case.
func itemName(item jsontext.Value, key string) (string, bool) {
	if item.Kind() != '{' {
		return "", false
	}
	dec := jsontext.NewDecoder(bytes.NewReader(item))
	dec.ReadToken()
	name, found := "", false
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return "", false
		}
		member := tok.String()
		v, err := readValue(dec, item)
		if err != nil {
			return "", false
		}
		switch {
		case member == key:
			if v.Kind() != '"' || json.Unmarshal(v, &name) != nil {
				return "", false
			}
			found = true
		case foldMatch(member, []string{key}) != "":
			return "", false
		}
	}
	return name, found
}

// ToolError reports whether a result object says isError: true (a
// tools/call result that is the tool's error). It reads the result as
// strictly as the rest of the message: a member spelling isError in
// another letter case, or an isError that is not a boolean, is an error,
// since clients would read such a result differently (the gateway would
// audit "ok" what a client shows as the tool's error).
func ToolError(result json.RawMessage) (bool, error) {
	if len(result) == 0 || result[0] != '{' {
		return false, nil
	}
	dec := jsontext.NewDecoder(bytes.NewReader(result))
	if _, err := dec.ReadToken(); err != nil {
		return false, err
	}
	isError := false
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return false, err
		}
		name := tok.String()
		if name != "isError" {
			if foldMatch(name, []string{"isError"}) != "" {
				return false, fmt.Errorf("the result member %q differs only in letter case from \"isError\"", name)
			}
			if err := dec.SkipValue(); err != nil {
				return false, err
			}
			continue
		}
		v, err := dec.ReadToken()
		if err != nil {
			return false, err
		}
		if v.Kind() != 't' && v.Kind() != 'f' {
			return false, fmt.Errorf("the result member \"isError\" is %s, not a boolean", kindName(v.Kind()))
		}
		isError = v.Bool()
	}
	return isError, nil
}
