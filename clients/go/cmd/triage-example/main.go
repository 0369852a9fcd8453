// Command triage-example classifies a case with the ED triage service, showing what
// every Go caller needs: the API key as a bearer token, a deadline on each call,
// retries (UNAVAILABLE by the gRPC service config, RESOURCE_EXHAUSTED after the wait
// the server names in RetryInfo) and the google.rpc details of a failed call.
//
//	export TRIAGE_TARGET=127.0.0.1:50051 TRIAGE_API_KEY=...
//	triage-example '{"age": {"years": 67}, "chief_complaint": "chest pain"}'
//
// The case is the proto JSON of a triage.v1.TriageCase ("-" reads it from stdin).
// Each answer is one line on stdout; a failed call prints its status and details on
// stderr, and the command exits 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	triagev1 "example.com/triage/clients/go/triage/v1"
)

// serviceConfig retries a call refused as UNAVAILABLE (a replica restarting, the audit
// store briefly down) with backoff, as the Python client does. RESOURCE_EXHAUSTED is
// not here: only the server knows how long to wait, and it says so in RetryInfo.
const serviceConfig = `{
  "methodConfig": [{
    "name": [{"service": "triage.v1.ClassifyService"}, {"service": "triage.v1.ExplainService"}],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

func main() {
	target := flag.String("target", envOr("TRIAGE_TARGET", "127.0.0.1:50051"), "host:port of the service")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each call")
	count := flag.Int("count", 1, "classify the case this many times (to see a rate limit at work)")
	maxRetryWait := flag.Duration("max-retry-wait", 2*time.Second,
		"retry a RESOURCE_EXHAUSTED call when its RetryInfo asks for at most this wait")
	caFile := flag.String("tls-ca", "", "TLS, trusting this CA file (default: plaintext)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] CASE_JSON|-\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	triageCase, err := readCase(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	transport := insecure.NewCredentials()
	if *caFile != "" {
		if transport, err = credentials.NewClientTLSFromFile(*caFile, ""); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	conn, err := grpc.NewClient(*target,
		grpc.WithTransportCredentials(transport),
		grpc.WithPerRPCCredentials(bearer{key: os.Getenv("TRIAGE_API_KEY"), secure: *caFile != ""}),
		grpc.WithDefaultServiceConfig(serviceConfig),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()
	client := triagev1.NewClassifyServiceClient(conn)

	failed := false
	for range *count {
		classification, requestID, err := classify(client, triageCase, *timeout, *maxRetryWait)
		if err != nil {
			report(err, requestID)
			failed = true
			continue
		}
		fmt.Printf("%s %s decided at %s: %s\n", classification.GetEsiLevel(), classification.GetClassificationId(),
			classification.GetDecidedAt(), classification.GetRationale())
	}
	if failed {
		os.Exit(1)
	}
}

// classify makes one Classify call under its own deadline. When the server refuses it
// as RESOURCE_EXHAUSTED and its RetryInfo asks for a wait no longer than maxRetryWait,
// it waits that long and tries again (a spent budget sends no RetryInfo: never retried).
// A failed call comes back with the request id the server logged it under.
func classify(client triagev1.ClassifyServiceClient, triageCase *triagev1.TriageCase, timeout,
	maxRetryWait time.Duration,
) (*triagev1.Classification, string, error) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var trailer metadata.MD
		response, err := client.Classify(ctx, &triagev1.ClassifyRequest{Case: triageCase}, grpc.Trailer(&trailer))
		cancel()
		if err == nil {
			return response.GetClassification(), "", nil
		}
		wait, ok := retryDelay(err)
		if status.Code(err) != codes.ResourceExhausted || !ok || wait > maxRetryWait {
			return nil, first(trailer.Get("x-request-id")), err
		}
		fmt.Fprintf(os.Stderr, "%s: retrying in %s, as RetryInfo asks\n", codes.ResourceExhausted, wait)
		time.Sleep(wait)
	}
}

// bearer sends the API key as `authorization: Bearer <key>` on every call.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if b.key == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

// RequireTransportSecurity is false only for plaintext, meant for a server on this machine.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// retryDelay is the wait the server asks for in a google.rpc.RetryInfo detail.
func retryDelay(err error) (time.Duration, bool) {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// report prints a failed call's status and each google.rpc detail it carries.
func report(err error, requestID string) {
	st := status.Convert(err)
	fmt.Fprintf(os.Stderr, "%s: %s\n", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Fprintf(os.Stderr, "  field %s: %s (%s)\n", v.GetField(), v.GetDescription(), v.GetReason())
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				fmt.Fprintf(os.Stderr, "  quota %s: %s\n", v.GetSubject(), v.GetDescription())
			}
		case *errdetails.RetryInfo:
			fmt.Fprintf(os.Stderr, "  retry after %s\n", d.GetRetryDelay().AsDuration())
		default: // a detail type this program does not know
			fmt.Fprintf(os.Stderr, "  detail: %v\n", d)
		}
	}
	if requestID != "" {
		fmt.Fprintf(os.Stderr, "  request id %s\n", requestID)
	}
}

// readCase parses the proto JSON of a TriageCase from the argument, or stdin for "-".
func readCase(arg string) (*triagev1.TriageCase, error) {
	text := []byte(arg)
	if arg == "-" {
		var err error
		if text, err = io.ReadAll(os.Stdin); err != nil {
			return nil, err
		}
	}
	triageCase := &triagev1.TriageCase{}
	if err := protojson.Unmarshal(text, triageCase); err != nil {
		return nil, fmt.Errorf("the case is not the JSON of a triage.v1.TriageCase: %w", err)
	}
	return triageCase, nil
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}
