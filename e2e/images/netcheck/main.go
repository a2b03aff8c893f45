// Command netcheck is the test workload of the e2e node (e2e/cluster.sh up --nodes N):
//
//	netcheck serve [-port 8080]      answer every HTTP GET with "netcheck <pod> <local address>"
//	netcheck get URL [-tries N]      GET URL (retrying), print the body; exit 0 on HTTP 200
//
// `get` also writes its result to /dev/termination-log, so a test reads it from the Pod's status
// (containerStatuses[].state.terminated.message) without the kubelet's log API.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		port := fs.Int("port", 8080, "TCP port")
		_ = fs.Parse(os.Args[2:])
		serve(*port)
	case "get":
		fs := flag.NewFlagSet("get", flag.ExitOnError)
		tries := fs.Int("tries", 30, "attempts, one second apart")
		_ = fs.Parse(os.Args[2:])
		if fs.NArg() != 1 {
			usage()
		}
		os.Exit(get(fs.Arg(0), *tries))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck serve [-port N] | netcheck get [-tries N] URL")
	os.Exit(2)
}

func serve(port int) {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		local := "?"
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			local = a.String()
		}
		fmt.Fprintf(w, "netcheck %s %s from %s\n", name, local, r.RemoteAddr)
	})
	fmt.Printf("netcheck: %s serving on :%d\n", name, port)
	if err := http.ListenAndServe(fmt.Sprintf(":%d", port), nil); err != nil {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
}

func get(url string, tries int) int {
	client := http.Client{Timeout: 3 * time.Second}
	var last string
	for i := 0; i < tries; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		resp, err := client.Get(url)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
			continue
		}
		report(fmt.Sprintf("OK %s", body))
		return 0
	}
	report(fmt.Sprintf("FAILED after %d tries: GET %s: %s", tries, url, last))
	return 1
}

func report(msg string) {
	fmt.Println(msg)
	_ = os.WriteFile("/dev/termination-log", []byte(msg), 0o644)
}
