using System.Net;
using System.Net.Sockets;

namespace Weft.Tests.Harness;

/// <summary>
/// Loopback ports for a test to hand to a child process (or a server) that binds them by number. They come from outside
/// the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), so no other test's port-0 bind
/// or outgoing connection can be handed the same port between the pick and the bind, which a port found by binding
/// port 0 and closing it allows. Each is checked bindable, all held at once while picked, and none is handed out twice
/// by this process.
/// </summary>
internal static class LoopbackPorts
{
    private static readonly (int First, int Last) Range = Outside(EphemeralRange());
    private static int _next = Random.Shared.Next(0, Range.Last - Range.First);

    public static int Free() => Free(1)[0];

    public static int[] Free(int count)
    {
        var held = new List<TcpListener>();
        try
        {
            for (var tries = 0; held.Count < count; tries++)
            {
                if (tries > Range.Last - Range.First)
                {
                    throw new InvalidOperationException($"no free loopback port between {Range.First} and {Range.Last}");
                }

                var port = Range.First + (int)((uint)Interlocked.Increment(ref _next) % (uint)(Range.Last - Range.First + 1));
                var listener = new TcpListener(IPAddress.Loopback, port);
                try
                {
                    listener.Start();
                    held.Add(listener);
                }
                catch (SocketException)
                {
                    listener.Stop();
                }
            }

            return [.. held.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            held.ForEach(l => l.Stop());
        }
    }

    /// <summary>Ports 20,000-32,000 below the ephemeral range, or above it when a machine's range starts lower.</summary>
    private static (int First, int Last) Outside((int Low, int High) ephemeral)
    {
        if (ephemeral.Low - 1 >= 21_000)
        {
            return (20_000, Math.Min(32_000, ephemeral.Low - 1));
        }

        if (ephemeral.High + 1 <= 64_535)
        {
            return (ephemeral.High + 1, 65_535);
        }

        throw new InvalidOperationException($"net.ipv4.ip_local_port_range {ephemeral.Low}-{ephemeral.High} leaves no loopback ports outside it for the tests");
    }

    private static (int Low, int High) EphemeralRange()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' ', '\n'], StringSplitOptions.RemoveEmptyEntries);
            return (int.Parse(range[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(range[1], System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return (32_768, 60_999);
        }
    }
}
