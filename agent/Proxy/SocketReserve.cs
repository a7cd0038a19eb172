using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Proxy;

/// <summary>
/// TCP sockets made ahead in a pod's network namespace, so opening a connection there does not wait for the
/// namespace's thread each time. A socket can only be made inside its namespace, on the thread that entered it
/// (<see cref="NetNamespace"/>): a hop to that thread and two setns() calls per socket were about 10 % of the
/// server-side agent's CPU at 1,000 new connections a second (perf, load suite). A namespace whose sockets are taken
/// in quick succession gets them in batches (doubling up to <see cref="MaxBatch"/> while each batch runs out within
/// <see cref="Burst"/>); one that is not busy gets one at a time, as before, and holds none. Sockets left unused for
/// <see cref="IdleAfter"/> are closed, and all of a pod's when it leaves.
/// </summary>
internal static class SocketReserve
{
    public const int MaxBatch = 16;
    private static readonly TimeSpan Burst = TimeSpan.FromMilliseconds(100);
    // Unused this long, a namespace's sockets close (checked every second): well within the 5 s in which a node's
    // descriptors must be back at their idle figure once a burst (or an attack) ends.
    private static readonly TimeSpan IdleAfter = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan SweepEvery = TimeSpan.FromSeconds(1);

    private static readonly ConcurrentDictionary<(string NetnsPath, AddressFamily Family), Reserve> Reserves = new();
    private static readonly Timer Sweeper = new(_ => Sweep(), null, SweepEvery, SweepEvery);

    /// <summary>Sockets made ahead and not yet taken, in every namespace (the weft_pod_sockets_reserved gauge).</summary>
    public static int Held
    {
        get
        {
            var count = 0;
            foreach (var reserve in Reserves.Values)
            {
                count += reserve.Count;
            }

            return count;
        }
    }

    /// <summary>Sockets made ahead in one namespace, of both families, not yet taken.</summary>
    internal static int HeldFor(string netnsPath) =>
        (Reserves.TryGetValue((netnsPath, AddressFamily.InterNetwork), out var v4) ? v4.Count : 0)
        + (Reserves.TryGetValue((netnsPath, AddressFamily.InterNetworkV6), out var v6) ? v6.Count : 0);

    /// <summary>
    /// A new, unconnected TCP socket of the namespace at <paramref name="netnsPath"/>, claimed as the agent's (so capture
    /// never takes it) and with Nagle off.
    /// </summary>
    public static PodSocket Take(string netnsPath, AddressFamily family)
    {
        var reserve = Reserves.GetOrAdd((netnsPath, family), static _ => new Reserve());
        if (!reserve.TryTake(out var socket))
        {
            var made = NetNamespace.Run(netnsPath, () => Make(family, reserve.NextBatch()));
            reserve.Add(made.AsSpan(1));
            socket = made[0];
        }

        // claimed when taken, not when made: by every capture open now, as before connect() it must be
        try
        {
            AgentSockets.Claim(socket);
            socket.NoDelay = true;
            return socket;
        }
        catch (CaptureException e)
        {
            socket.Dispose();
            // unclaimed, its connect would be captured back into the agent: fail it like a connect
            Log.Warn("proxy", $"{netnsPath}: {e.Message}");
            throw new SocketException((int)(e.Errno == 12 ? SocketError.NoBufferSpaceAvailable : SocketError.SocketError));
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Closes the namespace's sockets made ahead: its pod left (the path may name another namespace next).</summary>
    public static void Release(string netnsPath)
    {
        foreach (var family in (ReadOnlySpan<AddressFamily>)[AddressFamily.InterNetwork, AddressFamily.InterNetworkV6])
        {
            if (Reserves.TryRemove((netnsPath, family), out var reserve))
            {
                reserve.Close();
            }
        }
    }

    /// <summary>
    /// Up to <paramref name="count"/> sockets; fewer when the process runs out of descriptors partway (the first
    /// failure is thrown only when not even one was made), so a batch never fails a connection one socket would serve.
    /// </summary>
    private static PodSocket[] Make(AddressFamily family, int count)
    {
        var made = new PodSocket[count];
        for (var i = 0; i < count; i++)
        {
            try
            {
                made[i] = new PodSocket(family);
            }
            catch (SocketException) when (i > 0)
            {
                return made[..i];
            }
        }

        return made;
    }

    private static void Sweep()
    {
        foreach (var reserve in Reserves.Values)
        {
            reserve.CloseIfIdle(IdleAfter);
        }
    }

    private sealed class Reserve
    {
        private readonly Stack<PodSocket> _sockets = new();
        private long _lastMiss; // 0, long before any timestamp: the first miss makes one
        private long _lastTake = Stopwatch.GetTimestamp();
        private int _batch = 1;
        private bool _closed;

        public int Count
        {
            get
            {
                lock (_sockets)
                {
                    return _sockets.Count;
                }
            }
        }

        public bool TryTake(out PodSocket socket)
        {
            lock (_sockets)
            {
                _lastTake = Stopwatch.GetTimestamp();
                return _sockets.TryPop(out socket!);
            }
        }

        /// <summary>How many to make on this miss: twice the last batch if that one ran out within the burst window, else 1.</summary>
        public int NextBatch()
        {
            lock (_sockets)
            {
                var now = Stopwatch.GetTimestamp();
                _batch = Stopwatch.GetElapsedTime(_lastMiss, now) < Burst ? Math.Min(_batch * 2, MaxBatch) : 1;
                _lastMiss = now;
                return _batch;
            }
        }

        public void Add(ReadOnlySpan<PodSocket> sockets)
        {
            lock (_sockets)
            {
                if (!_closed)
                {
                    foreach (var socket in sockets)
                    {
                        _sockets.Push(socket);
                    }

                    return;
                }
            }

            // released meanwhile: these belong to a namespace that is gone
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }
        }

        public void CloseIfIdle(TimeSpan idleAfter)
        {
            lock (_sockets)
            {
                if (_sockets.Count == 0 || Stopwatch.GetElapsedTime(_lastTake) < idleAfter)
                {
                    return;
                }
            }

            Drain();
        }

        public void Close()
        {
            lock (_sockets)
            {
                _closed = true;
            }

            Drain();
        }

        private void Drain()
        {
            while (true)
            {
                PodSocket? socket;
                lock (_sockets)
                {
                    if (!_sockets.TryPop(out socket))
                    {
                        return;
                    }
                }

                socket.Dispose();
            }
        }
    }
}

/// <summary>
/// A TCP socket the agent opens in a pod's namespace (<see cref="SocketReserve"/>). A transparent delivery's gives its
/// port back to <see cref="DeliveryPorts"/> when disposed.
/// </summary>
internal sealed class PodSocket(AddressFamily family) : Socket(family, SocketType.Stream, ProtocolType.Tcp)
{
    private DeliveryPorts? _ports;
    private IPAddress? _from;
    private int _port;

    internal void HoldsPortOf(DeliveryPorts ports, IPAddress from, int port)
    {
        _from = from;
        _port = port;
        Volatile.Write(ref _ports, ports);
    }

    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        // after the close: the port is free for the turn (TIME_WAIT aside, which the turn's order keeps it clear of)
        Interlocked.Exchange(ref _ports, null)?.Return(_from!, _port);
    }
}
