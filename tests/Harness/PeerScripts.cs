using Weft.Harness;

namespace Weft.Tests.Harness;

/// <summary>
/// Tiny TCP peers in Debian's python (independent of Weft's own code), to prove reachability in the
/// cluster before any agent runs. The server answers "from IP:PORT got DATA": the address it saw.
/// </summary>
internal static class PeerScripts
{
    public const string Server = """
        import socket, sys
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        s.listen(64)
        print("listening", flush=True)
        while True:
            c, a = s.accept()
            data = b""
            while True:
                d = c.recv(65536)
                if not d:
                    break
                data += d
            c.sendall(("from %s:%d got %s" % (a[0], a[1], data.decode())).encode())
            c.close()
        """;

    public const string Client = """
        import socket, sys
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        c.sendall(sys.argv[3].encode())
        c.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            out += d
        print(out.decode(), flush=True)
        """;

    public const string ConnectProbe = """
        import socket, sys
        try:
            socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
            print("connected", flush=True)
        except OSError as e:
            print("error %s" % e, flush=True)
        """;

    private const string Python = "/usr/bin/python3";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    public static Task<ManagedProcess> StartServerAsync(ClusterPod pod, int port) =>
        WaitListening(pod.StartProcess(Python, "-c", Server, port.ToString()));

    public static Task<ManagedProcess> StartServerAsync(ClusterNode node, int port) =>
        WaitListening(node.StartProcess(Python, "-c", Server, port.ToString()));

    public static Task<string> ExchangeAsync(ClusterPod pod, string host, int port, string message) =>
        Exchange(pod.StartProcess(Python, "-c", Client, host, port.ToString(), message));

    public static Task<string> ExchangeAsync(ClusterNode node, string host, int port, string message) =>
        Exchange(node.StartProcess(Python, "-c", Client, host, port.ToString(), message));

    private static async Task<ManagedProcess> WaitListening(ManagedProcess server)
    {
        await server.WaitForStdoutLineAsync(l => l == "listening", Timeout);
        return server;
    }

    private static async Task<string> Exchange(ManagedProcess client)
    {
        await using (client)
        {
            var code = await client.WaitForExitAsync(Timeout);
            Assert.True(code == 0, $"client exited with {code}: {client.Stderr}");
            return Assert.Single(client.StdoutLines);
        }
    }
}
