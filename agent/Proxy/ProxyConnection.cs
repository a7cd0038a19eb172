using System.Net.Sockets;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>A relayed connection: its flow record, its relay and when a byte last crossed it.</summary>
internal sealed class ProxyConnection : IRelayObserver
{
    private long _lastActivity = Environment.TickCount64;

    public ProxyConnection(Flow flow) => Flow = flow;

    public Flow Flow { get; }

    /// <summary>A second record of the same bytes: the destination's view of an in-node short cut.</summary>
    public Flow? Mirror { get; set; }

    public long LastActivity => Volatile.Read(ref _lastActivity);

    public void OnBytes(bool fromA, int count)
    {
        // Side A is always the client that the capture handed us.
        if (fromA)
        {
            Flow.AddSent(count);
            Mirror?.AddSent(count);
        }
        else
        {
            Flow.AddReceived(count);
            Mirror?.AddReceived(count);
        }

        Volatile.Write(ref _lastActivity, Environment.TickCount64);
    }

    private IRelay? _relay;

    /// <summary>
    /// Starts relaying between the client and its upstream; <paramref name="end"/> finishes the connection when it is
    /// over. Nothing waits for it meanwhile.
    /// </summary>
    public void StartRelay(Socket client, Socket upstream, IRelayEnd<SocketRelay> end)
    {
        var relay = new SocketRelay(client, upstream, this);
        _relay = relay;
        relay.Start(end);
    }

    /// <summary>
    /// Starts relaying between a socket and a tunnel stream (<paramref name="socketIsClient"/> says which side sends);
    /// <paramref name="end"/> finishes the connection when it is over. Nothing waits for it meanwhile.
    /// </summary>
    public void StartRelay(Socket socket, Weft.Hbone.HboneStream stream, bool socketIsClient, IRelayEnd<StreamRelay> end)
    {
        var relay = new StreamRelay(socket, stream, this, socketIsClient);
        _relay = relay;
        relay.Start(end);
    }

    /// <summary>
    /// Reads the kernel's smoothed RTT of <paramref name="socket"/> onto the flow (and its mirror); called
    /// once when the relay ends, before the socket is disposed.
    /// </summary>
    public void RecordTcpRtt(Socket socket)
    {
        if (TcpInfo.TryRead(socket) is { } info)
        {
            Flow.TcpRtt = info.Rtt;
            Mirror?.TcpRtt = info.Rtt;
        }
    }

    public void Abort(string reason)
    {
        Flow.Error ??= reason;
        _relay?.Abort();
    }
}

/// <summary>A running relay, as its connection can end it.</summary>
internal interface IRelay
{
    /// <summary>Ends both sides at once with a reset (idle timeout, agent shutdown, policy).</summary>
    void Abort();
}
