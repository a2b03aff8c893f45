// Command netcheck is the test workload of the e2e node (e2e/cluster.sh up --nodes N):
//
//	netcheck serve [-port 8080]      answer every HTTP GET with "netcheck <pod> <local address>"
//	netcheck get URL [-tries N]      GET URL (retrying), print the body; exit 0 on HTTP 200
//	netcheck forward FROM TO         relay every connection accepted on FROM to TO, where each is
//	                                 tcp:HOST:PORT or unix:PATH (the e2e nodes reach the API server on
//	                                 127.0.0.1 through a unix socket: see e2e/node.sh)
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
	"strings"
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
	case "forward":
		if len(os.Args) != 4 {
			usage()
		}
		forward(os.Args[2], os.Args[3])
	default:
		usage()
	}
}

func endpoint(s string) (string, string) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		return "unix", p
	}
	if a, ok := strings.CutPrefix(s, "tcp:"); ok {
		return "tcp", a
	}
	usage()
	return "", ""
}

func forward(from, to string) {
	lnet, laddr := endpoint(from)
	dnet, daddr := endpoint(to)
	if lnet == "unix" {
		_ = os.Remove(laddr)
	}
	ln, err := net.Listen(lnet, laddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
	fmt.Printf("netcheck: forwarding %s to %s\n", from, to)
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netcheck:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			d, err := net.Dial(dnet, daddr)
			if err != nil {
				fmt.Fprintln(os.Stderr, "netcheck:", err)
				return
			}
			defer d.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(d, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, d); done <- struct{}{} }()
			<-done
		}()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck serve [-port N] | netcheck get [-tries N] URL | netcheck forward FROM TO")
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
