package cache

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Report is what Inspect finds in Redis about a Manager.
type Report struct {
	// Masters is how many nodes were inspected: the masters of a cluster,
	// the shards of a ring, else 1.
	Masters int
	// UsedMemory is the memory the servers report in use (INFO memory's
	// used_memory), in bytes, summed over masters; 0 when a server does not
	// report it.
	UsedMemory int64
	// Keys counts the keys under the Manager's prefix: entries, leases,
	// tags, locks and generations.
	Keys int64
	// SampleKeys holds up to 50 of those keys.
	SampleKeys []string
	// Stats is the Manager's Stats when the report was made.
	Stats Stats
}

// maxSampleKeys bounds Report.SampleKeys.
const maxSampleKeys = 50

// Inspect reports the memory Redis uses, how many keys the Manager has
// there and a sample of them. It counts with SCAN (never KEYS), on every
// master of a cluster, so it visits the whole keyspace: call it from an
// admin endpoint, not on every request.
func (m *Manager) Inspect(ctx context.Context) (Report, error) {
	if err := m.check(ctx); err != nil {
		return Report{}, err
	}
	var (
		mu  sync.Mutex // protects r
		r   Report
		pat = globEscape(m.prefix) + "*"
	)
	err := m.forEachMaster(ctx, func(ctx context.Context, nd node) error {
		// A server that does not answer INFO memory (miniredis) reports 0.
		info := redis.NewStringCmd(ctx, "info", "memory")
		var mem int64
		if cut, err := m.send(ctx, nd.c, nd.addr, info); !cut && err == nil {
			mem = usedMemory(info.Val())
		}
		var n int64
		var sample []string
		err := nd.scan(ctx, m.kv, pat, func(k string) {
			n++
			if len(sample) < maxSampleKeys {
				sample = append(sample, k)
			}
		})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		r.Masters++
		r.UsedMemory += mem
		r.Keys += n
		for _, k := range sample {
			if len(r.SampleKeys) < maxSampleKeys {
				r.SampleKeys = append(r.SampleKeys, k)
			}
		}
		return nil
	})
	if err != nil {
		return Report{}, wrap(err, "inspect")
	}
	r.Stats = m.Stats()
	return r, nil
}

// usedMemory reads used_memory from the reply of INFO memory; 0 when it is
// not there.
func usedMemory(info string) int64 {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}
