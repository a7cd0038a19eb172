using System.Net.Sockets;

namespace Weft.Tests.Proxy;

/// <summary>Which of this process's epoll instances watch a socket, as /proc/self/fdinfo lists their targets.</summary>
internal static class EpollSets
{
    /// <summary>The descriptors of the epoll instances whose sets hold <paramref name="socket"/>'s descriptor.</summary>
    public static IReadOnlyList<int> Holding(Socket socket)
    {
        var fd = (int)socket.Handle;
        var holders = new List<int>();
        foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(entry).LinkTarget;
            }
            catch (IOException)
            {
                continue;  // closed meanwhile
            }

            if (target != "anon_inode:[eventpoll]" || !int.TryParse(Path.GetFileName(entry), out var epoll))
            {
                continue;
            }

            string[] lines;
            try
            {
                lines = File.ReadAllLines($"/proc/self/fdinfo/{epoll}");
            }
            catch (IOException)
            {
                continue;
            }

            // "tfd:       42 events:       19 data: ..." per watched descriptor
            if (lines.Any(line => line.StartsWith("tfd:", StringComparison.Ordinal)
                && line.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [_, var tfd, ..] && tfd == fd.ToString(System.Globalization.CultureInfo.InvariantCulture)))
            {
                holders.Add(epoll);
            }
        }

        return holders;
    }
}
