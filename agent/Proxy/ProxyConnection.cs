using System.Net.Sockets;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>A relayed connection: its flow record, its relay and when a byte last crossed it.</summary>
internal sealed class ProxyConnection : IRelayObserver
{
    private long _lastActivity = Environment.TickCount64;
    private SocketRelay? _relay;

    public ProxyConnection(Flow flow) => Flow = flow;

    public Flow Flow { get; }

    public long LastActivity => Volatile.Read(ref _lastActivity);

    public void OnBytes(bool fromA, int count)
    {
        // Side A is always the client that the capture handed us.
        if (fromA)
        {
            Flow.AddSent(count);
        }
        else
        {
            Flow.AddReceived(count);
        }

        Volatile.Write(ref _lastActivity, Environment.TickCount64);
    }

    public Task RelayAsync(Socket client, Socket upstream)
    {
        _relay = new SocketRelay(client, upstream, this);
        return _relay.RunAsync();
    }

    public void Abort(string reason)
    {
        Flow.Error ??= reason;
        _relay?.Abort();
    }
}
