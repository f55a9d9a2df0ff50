package mastio

import (
	"context"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A reload's configuration takes over the location's background logging
// when it starts (the first configuration's log outputs close with it).
func TestTheStartedConfigurationLogsTheLocationsWork(t *testing.T) {
	dir := t.TempDir()
	first, firstLogs := observer.New(zap.InfoLevel)
	s, err := Prepare(Location{DataDir: dir, Database: Database(filepath.Join(dir, "mastio.db"))}, "", zap.New(first))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	secret, _ := NewSecret("3f9c2a7d41b8e6054c1d9a2f7e8b3c61")
	a, _ := s.With(Settings{AdminSecret: secret}, zap.New(first))
	if err := a.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	second, secondLogs := observer.New(zap.InfoLevel)
	b, err := s.With(Settings{AdminSecret: secret, TrustDomain: "reloaded.local"}, zap.New(second))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	before := firstLogs.Len()
	s.noteReadiness("database", context.DeadlineExceeded) // background work that logs
	if firstLogs.Len() != before || secondLogs.FilterMessage("readiness check failing").Len() != 1 {
		t.Fatalf("the location logs through the first configuration: first %d entries, second %d", firstLogs.Len()-before, secondLogs.Len())
	}
	if a.Settings().TrustDomain == b.Settings().TrustDomain {
		t.Fatal("the configurations share their settings")
	}
}
