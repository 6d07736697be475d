package flows

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/connect/kafka"
)

// KafkaURL is a built-in flow's Kafka input or output:
//
//	kafka://broker1:9092,broker2:9092/topic1,topic2?start=earliest&tail=true&group=wc
//	kafka://broker:9092/counts?exactly_once=true
//
// Input options: start (earliest, latest, or an RFC 3339 time; where a
// fresh flow starts), tail (keep reading; default: stop at the end offsets
// seen at start), group (commit offsets to this consumer group at each
// epoch close, for lag monitoring only). Output options: exactly_once
// (default false: at least once). The output topic's records are keyed by
// the line's first comma-separated field.
type KafkaURL struct {
	Brokers     []string
	Topics      []string
	Start       kafka.Start
	Tail        bool
	Group       string
	ExactlyOnce bool
}

// IsKafka reports whether an input or output names Kafka.
func IsKafka(s string) bool { return strings.HasPrefix(s, "kafka://") }

// ParseKafkaURL parses a kafka:// input (output false) or output.
func ParseKafkaURL(s string, output bool) (KafkaURL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "kafka" {
		return KafkaURL{}, fmt.Errorf("%q is not a kafka://BROKERS/TOPICS URL", s)
	}
	k := KafkaURL{Start: kafka.Earliest}
	for _, b := range strings.Split(u.Host, ",") {
		if b = strings.TrimSpace(b); b != "" {
			k.Brokers = append(k.Brokers, b)
		}
	}
	for _, t := range strings.Split(strings.Trim(u.Path, "/"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			k.Topics = append(k.Topics, t)
		}
	}
	if len(k.Brokers) == 0 || len(k.Topics) == 0 {
		return KafkaURL{}, fmt.Errorf("%q names no broker or no topic: use kafka://host:port/topic", s)
	}
	if output && len(k.Topics) != 1 {
		return KafkaURL{}, fmt.Errorf("%q: an output is one topic", s)
	}
	q := u.Query()
	for key, vs := range q {
		v := vs[len(vs)-1]
		switch {
		case key == "start" && !output:
			switch v {
			case "earliest":
				k.Start = kafka.Earliest
			case "latest":
				k.Start = kafka.Latest
			default:
				t, err := time.Parse(time.RFC3339, v)
				if err != nil {
					return KafkaURL{}, fmt.Errorf("%q: start=%q: use earliest, latest or an RFC 3339 time", s, v)
				}
				k.Start = kafka.At(t)
			}
		case key == "tail" && !output:
			if k.Tail, err = strconv.ParseBool(v); err != nil {
				return KafkaURL{}, fmt.Errorf("%q: tail=%q is not true or false", s, v)
			}
		case key == "group" && !output:
			k.Group = v
		case (key == "exactly_once" || key == "exactly-once") && output:
			if k.ExactlyOnce, err = strconv.ParseBool(v); err != nil {
				return KafkaURL{}, fmt.Errorf("%q: exactly_once=%q is not true or false", s, v)
			}
		default:
			return KafkaURL{}, fmt.Errorf("%q: unknown option %q (input: start, tail, group; output: exactly_once)", s, key)
		}
	}
	return k, nil
}
