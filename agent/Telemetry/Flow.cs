using System.Net;
using System.Text.Json;

namespace Weft.Telemetry;

internal enum FlowDirection
{
    Outbound,
    Inbound,
}

/// <summary>
/// One proxied connection as the agent saw it. Byte counters are written by the relay while the
/// connection is open, so a reader sees a long transfer grow.
/// </summary>
internal sealed class Flow
{
    private static long _nextId;
    private long _bytesSent;
    private long _bytesReceived;
    private MeshMetrics.FlowMeter? _meter;

    public Flow(FlowDirection direction, IPEndPoint source, IPEndPoint originalDestination)
        : this(direction, source, originalDestination, DateTimeOffset.UtcNow)
    {
    }

    /// <summary>A flow that started at a given moment: for replaying records and for tests.</summary>
    internal Flow(FlowDirection direction, IPEndPoint source, IPEndPoint originalDestination, DateTimeOffset start)
    {
        Id = Interlocked.Increment(ref _nextId);
        Direction = direction;
        Source = source;
        OriginalDestination = originalDestination;
        Start = start;
    }

    public long Id { get; }

    public FlowDirection Direction { get; }

    /// <summary>Client address as the agent saw it.</summary>
    public IPEndPoint Source { get; }

    /// <summary>Where the client meant to go (the address it connected to before capture).</summary>
    public IPEndPoint OriginalDestination { get; }

    /// <summary>Where the agent sent it: the original destination or a service endpoint.</summary>
    public IPEndPoint? Destination { get; set; }

    public string? SourceWorkload { get; set; }

    public string? DestinationWorkload { get; set; }

    public string? DestinationService { get; set; }

    /// <summary>SPIFFE ID of the client, when it proved one (mTLS or an in-node short cut).</summary>
    public string? SourcePrincipal { get; set; }

    /// <summary>SPIFFE ID the destination proved (outbound) or holds (inbound).</summary>
    public string? DestinationPrincipal { get; set; }

    /// <summary>Istio's connection_security_policy: "mutual_tls" or "none".</summary>
    public string SecurityPolicy { get; set; } = "none";

    public TimeSpan? TlsHandshakeTime { get; set; }

    /// <summary>
    /// The kernel's smoothed round-trip time (TCP_INFO tcpi_rtt) when the connection ended, read on the
    /// socket that crosses the network when there is one (outbound: upstream; inbound: client), else the
    /// pod-side socket of a tunnelled or in-node flow.
    /// </summary>
    public TimeSpan? TcpRtt { get; set; }

    /// <summary>W3C trace context that arrived with (or was sent on) the tunnel request.</summary>
    public string? TraceParent { get; set; }

    public DateTimeOffset Start { get; }

    public DateTimeOffset? End { get; private set; }

    public TimeSpan? ConnectTime { get; set; }

    /// <summary>Istio-style response flags: "-" when all went well.</summary>
    public string ResponseFlags { get; set; } = "-";

    public string? Error { get; set; }

    /// <summary>Bytes from the client towards the destination.</summary>
    public long BytesSent => Volatile.Read(ref _bytesSent);

    /// <summary>Bytes from the destination back to the client.</summary>
    public long BytesReceived => Volatile.Read(ref _bytesReceived);

    public void AddSent(int count) => Interlocked.Add(ref _bytesSent, count);

    public void AddReceived(int count) => Interlocked.Add(ref _bytesReceived, count);

    public void Finish() => End ??= DateTimeOffset.UtcNow;

    internal void FinishAt(DateTimeOffset end) => End = end;

    /// <summary>
    /// What the metrics already counted of this flow: made when they first count it (never with the metrics off),
    /// and once they counted its close, the shared <see cref="MeshMetrics.FlowMeter.Finished"/>, so the 4,096
    /// finished flows <c>weft flows</c> keeps hold no meter (and no metric series) of their own.
    /// </summary>
    internal MeshMetrics.FlowMeter Meter => Volatile.Read(ref _meter) ?? Interlocked.CompareExchange(ref _meter, new(), null) ?? _meter!;

    /// <summary>The metrics counted this flow's close: its meter goes.</summary>
    internal void MeterFinished() => Volatile.Write(ref _meter, MeshMetrics.FlowMeter.Finished);

    /// <summary>
    /// The outcome in one word, for filtering: forwarded (flags "-", or closed idle after forwarding),
    /// denied (policy said no), error (anything else: no endpoint, upstream or TLS failure, limits).
    /// </summary>
    public string Verdict => VerdictOf(ResponseFlags);

    public static string VerdictOf(string responseFlags) => responseFlags switch
    {
        "-" or "IDLE_TIMEOUT" => "forwarded",
        "DENY" => "denied",
        _ => "error",
    };

    public void WriteJson(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteNumber("id", Id);
        w.WriteString("direction", Direction == FlowDirection.Outbound ? "outbound" : "inbound");
        w.WriteString("state", End is null ? "live" : "finished");
        w.WriteString("source", Source.ToString());
        w.WriteString("source_workload", SourceWorkload);
        w.WriteString("original_destination", OriginalDestination.ToString());
        w.WriteString("destination", Destination?.ToString());
        w.WriteString("destination_service", DestinationService);
        w.WriteString("destination_workload", DestinationWorkload);
        w.WriteString("source_principal", SourcePrincipal);
        w.WriteString("destination_principal", DestinationPrincipal);
        w.WriteString("connection_security_policy", SecurityPolicy);
        if (TraceParent is not null)
        {
            w.WriteString("traceparent", TraceParent);
        }

        w.WriteString("start", Start);
        if (End is { } end)
        {
            w.WriteString("end", end);
            w.WriteNumber("duration_ms", Math.Round((end - Start).TotalMilliseconds, 3));
        }
        else
        {
            // So far: a live flow's age.
            w.WriteNumber("duration_ms", Math.Round((DateTimeOffset.UtcNow - Start).TotalMilliseconds, 3));
        }

        if (ConnectTime is { } connect)
        {
            w.WriteNumber("connect_ms", Math.Round(connect.TotalMilliseconds, 3));
        }

        if (TlsHandshakeTime is { } tls)
        {
            w.WriteNumber("tls_handshake_ms", Math.Round(tls.TotalMilliseconds, 3));
        }

        if (TcpRtt is { } rtt)
        {
            w.WriteNumber("tcp_rtt_ms", Math.Round(rtt.TotalMilliseconds, 3));
        }

        w.WriteNumber("bytes_sent", BytesSent);
        w.WriteNumber("bytes_received", BytesReceived);
        w.WriteString("response_flags", ResponseFlags);
        w.WriteString("verdict", Verdict);
        if (Error is not null)
        {
            w.WriteString("error", Error);
        }

        w.WriteEndObject();
    }
}
