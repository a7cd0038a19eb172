using System.Collections.Concurrent;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>
/// Every open connection of the agent: enforces the idle timeout with one periodic sweep (no timer
/// per connection) and drains on shutdown.
/// </summary>
internal sealed class ConnectionTracker : IDisposable
{
    private readonly ConcurrentDictionary<long, ProxyConnection> _open = new();
    private readonly FlowTable _flows;
    private readonly TimeSpan _idleTimeout;
    private readonly Timer _sweep;

    public ConnectionTracker(FlowTable flows, TimeSpan idleTimeout)
    {
        _flows = flows;
        _idleTimeout = idleTimeout;
        var period = TimeSpan.FromMilliseconds(Math.Clamp(idleTimeout.TotalMilliseconds / 4, 100, 5000));
        _sweep = new Timer(_ => Sweep(), null, period, period);
    }

    public int Count => _open.Count;

    public FlowTable Flows => _flows;

    public void Add(ProxyConnection connection)
    {
        _open[connection.Flow.Id] = connection;
        _flows.Opened(connection.Flow);
    }

    public void Remove(ProxyConnection connection)
    {
        if (_open.TryRemove(connection.Flow.Id, out _))
        {
            _flows.Closed(connection.Flow);
        }
    }

    private void Sweep()
    {
        var now = Environment.TickCount64;
        var limit = (long)_idleTimeout.TotalMilliseconds;
        foreach (var connection in _open.Values)
        {
            if (now - connection.LastActivity > limit)
            {
                connection.Flow.ResponseFlags = ResponseFlag.IdleTimeout;
                connection.Abort("idle timeout");
            }
        }
    }

    /// <summary>Waits for open connections to finish on their own, then resets what is left.</summary>
    public async Task DrainAsync(TimeSpan grace)
    {
        var deadline = DateTime.UtcNow + grace;
        while (!_open.IsEmpty && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }

        foreach (var connection in _open.Values)
        {
            connection.Abort("agent shutting down");
        }
    }

    public void Dispose() => _sweep.Dispose();
}
