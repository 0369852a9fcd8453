package org.example.triage.example;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.util.Durations;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.BadRequest;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RetryInfo;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.protobuf.StatusProto;
import java.io.File;
import java.io.IOException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import org.example.triage.v1.Classification;
import org.example.triage.v1.ClassifyRequest;
import org.example.triage.v1.ClassifyServiceGrpc;
import org.example.triage.v1.TriageCase;

/**
 * Classifies a case with the ED triage service, showing what every Java caller needs: the API
 * key as a bearer token, a deadline on each call, retries (UNAVAILABLE by the gRPC service
 * config, RESOURCE_EXHAUSTED after the wait the server names in RetryInfo) and the google.rpc
 * details of a failed call.
 *
 * <p>Arguments: the proto JSON of a triage.v1.TriageCase, then how many times to classify it
 * (default 1). Environment: TRIAGE_TARGET (default 127.0.0.1:50051), TRIAGE_API_KEY, and
 * TRIAGE_TLS_CA for TLS trusting that CA file (default: plaintext).
 */
public final class TriageExample {
  private static final Duration DEADLINE = Duration.ofSeconds(5);
  private static final Duration MAX_RETRY_WAIT = Duration.ofSeconds(2);
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> REQUEST_ID =
      Metadata.Key.of("x-request-id", Metadata.ASCII_STRING_MARSHALLER);

  /**
   * Retries a call refused as UNAVAILABLE (a replica restarting, the audit store briefly down)
   * with backoff, as the Python client does. RESOURCE_EXHAUSTED is not here: only the server
   * knows how long to wait, and it says so in RetryInfo. (grpc-java wants numbers as doubles.)
   */
  private static final Map<String, ?> SERVICE_CONFIG =
      Map.of(
          "methodConfig",
          List.of(
              Map.of(
                  "name",
                  List.of(
                      Map.of("service", "triage.v1.ClassifyService"),
                      Map.of("service", "triage.v1.ExplainService")),
                  "retryPolicy",
                  Map.of(
                      "maxAttempts", 4.0,
                      "initialBackoff", "0.1s",
                      "maxBackoff", "2s",
                      "backoffMultiplier", 2.0,
                      "retryableStatusCodes", List.of("UNAVAILABLE")))));

  private TriageExample() {}

  public static void main(String[] args) throws Exception {
    if (args.length < 1 || args.length > 2) {
      System.err.println("usage: TriageExample CASE_JSON [COUNT]");
      System.exit(2);
    }
    TriageCase.Builder triageCase = TriageCase.newBuilder();
    JsonFormat.parser().merge(args[0], triageCase);
    int count = args.length > 1 ? Integer.parseInt(args[1]) : 1;

    String target = Optional.ofNullable(System.getenv("TRIAGE_TARGET")).orElse("127.0.0.1:50051");
    String ca = System.getenv("TRIAGE_TLS_CA");
    ChannelCredentials transport =
        ca == null
            ? InsecureChannelCredentials.create()
            : TlsChannelCredentials.newBuilder().trustManager(new File(ca)).build();
    ManagedChannel channel =
        Grpc.newChannelBuilder(target, transport)
            .defaultServiceConfig(SERVICE_CONFIG)
            .enableRetry()
            .build();
    ClassifyServiceGrpc.ClassifyServiceBlockingStub stub =
        ClassifyServiceGrpc.newBlockingStub(channel)
            .withCallCredentials(new Bearer(System.getenv("TRIAGE_API_KEY"), ca == null));

    boolean failed = false;
    try {
      for (int i = 0; i < count; i++) {
        try {
          Classification c = classify(stub, triageCase.build());
          System.out.printf(
              "%s %s decided at %s: %s%n",
              c.getEsiLevel(), c.getClassificationId(), c.getDecidedAt(), c.getRationale());
        } catch (StatusRuntimeException error) {
          report(error);
          failed = true;
        }
      }
    } finally {
      channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(failed ? 1 : 0);
  }

  /**
   * One Classify call under its own deadline. When the server refuses it as RESOURCE_EXHAUSTED
   * and its RetryInfo asks for a wait no longer than MAX_RETRY_WAIT, waits that long and tries
   * again (a spent budget sends no RetryInfo: never retried).
   */
  static Classification classify(ClassifyServiceGrpc.ClassifyServiceBlockingStub stub, TriageCase triageCase)
      throws InterruptedException {
    while (true) {
      try {
        return stub.withDeadlineAfter(DEADLINE.toMillis(), TimeUnit.MILLISECONDS)
            .classify(ClassifyRequest.newBuilder().setCase(triageCase).build())
            .getClassification();
      } catch (StatusRuntimeException error) {
        Optional<Duration> wait = detail(error, RetryInfo.class).map(r -> toDuration(r));
        if (error.getStatus().getCode() != Status.Code.RESOURCE_EXHAUSTED
            || wait.isEmpty()
            || wait.get().compareTo(MAX_RETRY_WAIT) > 0) {
          throw error;
        }
        System.err.printf("RESOURCE_EXHAUSTED: retrying in %s, as RetryInfo asks%n", wait.get());
        Thread.sleep(wait.get().toMillis());
      }
    }
  }

  /** Prints a failed call's status and each google.rpc detail it carries. */
  static void report(StatusRuntimeException error) {
    System.err.printf("%s: %s%n", error.getStatus().getCode(), error.getStatus().getDescription());
    detail(error, BadRequest.class)
        .ifPresent(
            request ->
                request
                    .getFieldViolationsList()
                    .forEach(
                        v ->
                            System.err.printf(
                                "  field %s: %s (%s)%n",
                                v.getField(), v.getDescription(), v.getReason())));
    detail(error, QuotaFailure.class)
        .ifPresent(
            failure ->
                failure
                    .getViolationsList()
                    .forEach(
                        v ->
                            System.err.printf(
                                "  quota %s: %s%n", v.getSubject(), v.getDescription())));
    detail(error, RetryInfo.class)
        .ifPresent(info -> System.err.printf("  retry after %s%n", toDuration(info)));
    Metadata trailers = error.getTrailers();
    if (trailers != null && trailers.get(REQUEST_ID) != null) {
      System.err.printf("  request id %s%n", trailers.get(REQUEST_ID));
    }
  }

  /** The first google.rpc detail of the given type in the status's details trailer. */
  static <T extends com.google.protobuf.Message> Optional<T> detail(
      StatusRuntimeException error, Class<T> kind) {
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    if (status == null) {
      return Optional.empty();
    }
    for (Any any : status.getDetailsList()) {
      if (any.is(kind)) {
        try {
          return Optional.of(any.unpack(kind));
        } catch (InvalidProtocolBufferException e) {
          return Optional.empty();
        }
      }
    }
    return Optional.empty();
  }

  private static Duration toDuration(RetryInfo info) {
    return Duration.ofNanos(Durations.toNanos(info.getRetryDelay()));
  }

  /**
   * Sends the API key as {@code authorization: Bearer <key>} on every call; over plaintext only
   * when plaintext was asked for (a server on this machine).
   */
  static final class Bearer extends CallCredentials {
    private final String key;
    private final boolean plaintext;

    Bearer(String key, boolean plaintext) {
      this.key = key;
      this.plaintext = plaintext;
    }

    @Override
    public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
      if (!plaintext && info.getSecurityLevel() != SecurityLevel.PRIVACY_AND_INTEGRITY) {
        applier.fail(Status.UNAUTHENTICATED.withDescription("refusing to send the API key without TLS"));
        return;
      }
      Metadata headers = new Metadata();
      if (key != null && !key.isEmpty()) {
        headers.put(AUTHORIZATION, "Bearer " + key);
      }
      applier.apply(headers);
    }
  }
}
