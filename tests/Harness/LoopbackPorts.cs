using System.Net;
using System.Net.Sockets;

namespace Weft.Tests.Harness;

/// <summary>
/// Loopback ports for a test to hand to a child process (or a server) that binds them by number. They come from below
/// the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), so no other test's port-0 bind
/// or outgoing connection can be handed the same port between the pick and the bind, which a port found by binding
/// port 0 and closing it allows. Each is checked bindable, all held at once while picked, and none is handed out twice
/// by this process.
/// </summary>
internal static class LoopbackPorts
{
    private const int First = 20_000;
    private static readonly int Last = Math.Min(32_000, EphemeralLow() - 1);
    private static int _next = Random.Shared.Next(0, Last - First);

    public static int Free() => Free(1)[0];

    public static int[] Free(int count)
    {
        var held = new List<TcpListener>();
        try
        {
            for (var tries = 0; held.Count < count; tries++)
            {
                if (tries > Last - First)
                {
                    throw new InvalidOperationException($"no free loopback port between {First} and {Last}");
                }

                var port = First + (int)((uint)Interlocked.Increment(ref _next) % (uint)(Last - First + 1));
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

    private static int EphemeralLow()
    {
        try
        {
            return int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)[0], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return 32_768;
        }
    }
}
