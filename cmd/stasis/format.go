package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Format("2006-01-02")
}

// formatFlag is the help of a listing's --format, as Podman's.
const formatFlag = `"json" for a JSON array, or a Go template applied to each row (e.g. '{{.Names}} {{.Status}}')`

// printList writes a listing as --format asks: table() by default, the
// JSON array of jsonRows with "json", or tmpl run on each of rows.
func printList[J, R any](format string, jsonRows []J, rows []R, table func() error) error {
	switch format {
	case "":
		return table()
	case "json":
		if jsonRows == nil {
			jsonRows = []J{} // "[]", never "null"
		}
		return printJSON(jsonRows)
	}
	t, err := template.New("format").Parse(strings.TrimSuffix(format, "\n") + "\n")
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	w := bufio.NewWriter(os.Stdout)
	for _, r := range rows {
		if err := t.Execute(w, r); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
	}
	return w.Flush()
}
