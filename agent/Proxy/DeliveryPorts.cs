using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// Source ports for transparent delivery into one pod's namespace, chosen by the agent: odd ports of the namespace's
/// local port range (as bind() to port 0 would pick, docs/capture.md), taken in turn per client address, so the next
/// one is the one that address used longest ago and has normally left TIME_WAIT. bind() to port 0 searches the range
/// and checks every candidate against every socket bound there: with 10,000 delivered connections held in one pod,
/// that search took 87 % of the agent's CPU in the load suite; a bind() to one given port checks one port.
/// </summary>
internal sealed class DeliveryPorts
{
    // Tries before leaving the search to the kernel (port 0): a client address past ~230 new connections a second
    // into one pod finds its next ports still in TIME_WAIT, and a failed bind() costs an exception here.
    private const int Tries = 8;

    // Cursors per client address, by hash: addresses that share one only share the turn, memory stays bounded.
    private readonly int[] _cursors = new int[256];
    private readonly int _firstOdd;
    private readonly int _count;
    private readonly HashSet<int>? _reserved;

    public DeliveryPorts(int low, int high, HashSet<int>? reserved)
    {
        _firstOdd = low | 1;
        _count = Math.Max(0, ((high - _firstOdd) / 2) + 1);
        _reserved = reserved is { Count: > 0 } ? reserved : null;
        for (var i = 0; i < _cursors.Length; i++)
        {
            _cursors[i] = Random.Shared.Next();
        }
    }

    /// <summary>The kernel's default range (ip_local_port_range 32768-60999), no reserved ports.</summary>
    public static DeliveryPorts Default { get; } = new(32768, 60999, null);

    /// <summary>
    /// The current namespace's ports, from /proc/sys/net/ipv4/ip_local_port_range and ip_local_reserved_ports (run on
    /// the pod's namespace thread: /proc/sys/net shows the namespace of the thread that reads it); the default if
    /// unreadable.
    /// </summary>
    public static DeliveryPorts ReadCurrentNamespace()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            var reserved = ParseReserved(File.Exists("/proc/sys/net/ipv4/ip_local_reserved_ports") ? File.ReadAllText("/proc/sys/net/ipv4/ip_local_reserved_ports") : "");
            return range.Length == 2 && int.TryParse(range[0], CultureInfo.InvariantCulture, out var low) && int.TryParse(range[1], CultureInfo.InvariantCulture, out var high)
                && low is > 0 and <= 65535 && high >= low && high <= 65535
                ? new DeliveryPorts(low, high, reserved)
                : Default;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Default;
        }
    }

    /// <summary>"1000,2000-2010" as the set of ports it names; what does not parse is left out.</summary>
    internal static HashSet<int> ParseReserved(string text)
    {
        var ports = new HashSet<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var bounds = part.Split('-');
            if (int.TryParse(bounds[0], CultureInfo.InvariantCulture, out var first) && first is > 0 and <= 65535)
            {
                var last = bounds.Length == 2 && int.TryParse(bounds[1], CultureInfo.InvariantCulture, out var end) ? Math.Min(end, 65535) : first;
                for (var port = first; port <= last; port++)
                {
                    ports.Add(port);
                }
            }
        }

        return ports;
    }

    /// <summary>The next port this client address would take (odd, in the range, not reserved), advancing its turn.</summary>
    internal int Next(IPAddress from)
    {
        var slot = from.GetHashCode() & (_cursors.Length - 1);
        for (var skipped = 0; skipped < 64; skipped++)
        {
            var port = _firstOdd + (2 * (int)((uint)Interlocked.Increment(ref _cursors[slot]) % (uint)_count));
            if (_reserved is null || !_reserved.Contains(port))
            {
                return port;
            }
        }

        return 0;
    }

    /// <summary>Binds <paramref name="socket"/> to <paramref name="from"/> with a port of this namespace's turn, else port 0.</summary>
    public void Bind(Socket socket, IPAddress from)
    {
        if (_count > 0)
        {
            for (var i = 0; i < Tries; i++)
            {
                var port = Next(from);
                if (port == 0)
                {
                    break;
                }

                try
                {
                    socket.Bind(new IPEndPoint(from, port));
                    return;
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
                {
                    // still in TIME_WAIT, or held: the next in turn
                }
            }
        }

        socket.Bind(new IPEndPoint(from, 0));
    }
}
