using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;

namespace Weft.Telemetry;

/// <summary>
/// Live flows plus a bounded ring of finished ones; writes one access-log line per finished flow.
/// </summary>
public sealed class FlowTable
{
    private readonly ConcurrentDictionary<long, Flow> _live = new();
    private readonly Flow?[] _recent;
    private readonly object _recentGate = new();
    private readonly TextWriter? _accessLog;
    private long _recentCount;

    public FlowTable(int recentCapacity = 4096, TextWriter? accessLog = null)
    {
        _recent = new Flow?[recentCapacity];
        _accessLog = accessLog;
    }

    public int LiveCount => _live.Count;

    public void Opened(Flow flow) => _live[flow.Id] = flow;

    public void Closed(Flow flow)
    {
        flow.Finish();
        _live.TryRemove(flow.Id, out _);
        lock (_recentGate)
        {
            _recent[_recentCount % _recent.Length] = flow;
            _recentCount++;
        }

        if (_accessLog is not null)
        {
            var line = ToJson(flow);
            lock (_accessLog)
            {
                _accessLog.WriteLine(line);
                _accessLog.Flush();
            }
        }
    }

    public IReadOnlyList<Flow> Live() => _live.Values.OrderBy(f => f.Id).ToList();

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
}
