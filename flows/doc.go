// Package flows holds the flows flowrun ships: wordcount and logstats. They
// are ordinary core flows, useful on their own and as examples.
package flows
