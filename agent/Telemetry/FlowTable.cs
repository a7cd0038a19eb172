using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Weft.Telemetry;

/// <summary>How the access log writes a finished connection.</summary>
internal enum AccessLogFormat
{
    Json,
    Text,
}

/// <summary>
/// Live flows plus a bounded ring of finished ones; writes one access-log line per finished flow and
/// tells its observer (the metrics) when a flow opens and closes.
/// </summary>
internal sealed class FlowTable
{
    private readonly ConcurrentDictionary<long, Flow> _live = new();
    private readonly Flow?[] _recent;
    private readonly Lock _recentGate = new();
    private readonly AccessLogWriter? _accessLog;
    private readonly AccessLogFormat _format;
    private long _recentCount;

    public FlowTable(int recentCapacity = 4096, TextWriter? accessLog = null, AccessLogFormat format = AccessLogFormat.Json)
    {
        _recent = new Flow?[recentCapacity];
        _accessLog = accessLog is null ? null : new AccessLogWriter(accessLog);
        _format = format;
    }

    public int LiveCount => _live.Count;

    /// <summary>Set once at start (the metrics); called outside any lock of the table.</summary>
    public IFlowObserver? Observer { get; set; }

    /// <summary>
    /// The live flows in no particular order, for the metrics' scrape. Enumerating the dictionary takes
    /// no lock (its Values property would take them all), so a scrape never holds up Opened/Closed.
    /// </summary>
    internal IEnumerable<Flow> LiveFlows
    {
        get
        {
            foreach (var (_, flow) in _live)
            {
                yield return flow;
            }
        }
    }

    public void Opened(Flow flow)
    {
        _live[flow.Id] = flow;
        Observer?.Opened(flow);
    }

    public void Closed(Flow flow)
    {
        flow.Finish();
        _live.TryRemove(flow.Id, out _);
        Observer?.Closed(flow);
        lock (_recentGate)
        {
            _recent[_recentCount % _recent.Length] = flow;
            _recentCount++;
        }

        if (_accessLog is not null)
        {
            _accessLog.Write(_format == AccessLogFormat.Json ? ToJson(flow) : ToText(flow));
        }
    }

    /// <summary>Access-log lines dropped because the log's reader fell behind.</summary>
    public long AccessLogDropped => _accessLog?.Dropped ?? 0;

    /// <summary>Writes the access-log lines still queued; the table records no more closes to the log after it.</summary>
    public ValueTask FlushAccessLogAsync() => _accessLog?.DisposeAsync() ?? ValueTask.CompletedTask;

    public IReadOnlyList<Flow> Live() => _live.Values.OrderBy(f => f.Id).ToList();

    /// <summary>Finished flows, oldest first, at most the ring's capacity.</summary>
    public IReadOnlyList<Flow> Recent()
    {
        lock (_recentGate)
        {
            var count = (int)Math.Min(_recentCount, _recent.Length);
            var list = new List<Flow>(count);
            for (var i = _recentCount - count; i < _recentCount; i++)
            {
                list.Add(_recent[i % _recent.Length]!);
            }

            return list;
        }
    }

    public static string ToJson(Flow flow)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            flow.WriteJson(w);
        }

        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    /// <summary>
    /// One line in the spirit of Envoy's TCP access log:
    /// <c>[start] "direction" flags verdict received sent duration_ms "source_workload" source "destination_workload" destination "service" "source_principal" "destination_principal" policy</c>.
    /// </summary>
    public static string ToText(Flow flow)
    {
        var duration = flow.End is { } end ? (end - flow.Start).TotalMilliseconds : 0;
        return string.Create(CultureInfo.InvariantCulture,
            $"[{flow.Start:yyyy-MM-ddTHH:mm:ss.fffZ}] \"{(flow.Direction == FlowDirection.Outbound ? "outbound" : "inbound")}\" {flow.ResponseFlags} {flow.Verdict} "
            + $"{flow.BytesSent} {flow.BytesReceived} {duration:0} \"{flow.SourceWorkload ?? "-"}\" {flow.Source} "
            + $"\"{flow.DestinationWorkload ?? "-"}\" {flow.Destination?.ToString() ?? flow.OriginalDestination.ToString()} \"{flow.DestinationService ?? "-"}\" "
            + $"\"{flow.SourcePrincipal ?? "-"}\" \"{flow.DestinationPrincipal ?? "-"}\" {flow.SecurityPolicy}{(flow.Error is null ? "" : $" \"{flow.Error}\"")}");
    }
}
