using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Weft.Harness;

/// <summary>
/// `weft app hold`: opens N connections (K at a time), optionally exchanges a few bytes on each with an
/// echo server so the whole path is known to be up, prints one line when all are open, then keeps them
/// idle until stopped (SIGTERM, or stdin closing unless --stdin ignore). A zero-byte receive waits on
/// each, so a connection the other side closes is counted. The benchmark uses it to measure what an
/// agent spends per idle open connection.
/// <code>
/// {"open":10000,"failed":0,"errors":{},"elapsed_ms":2310}                                  all attempted
/// {"summary":true,"open":10000,"failed":0,"closed_by_peer":0,"held_ms":6021}               after release
/// </code>
/// </summary>
internal static class PeerHold
{
    public static async Task<int> RunAsync(PeerArguments args, Action<string> emit, CancellationToken cancellationToken)
    {
        var target = await args.EndPointAsync("to", cancellationToken).ConfigureAwait(false);
        var connections = (int)Math.Clamp(args.Number("connections", 1), 1, 1_000_000);
        var concurrency = (int)Math.Clamp(args.Number("concurrency", 200), 1, 100_000);
        var exchange = (int)Math.Clamp(args.Number("exchange-bytes", 0), 0, Pattern.BlockSize);
        var timeout = TimeSpan.FromMilliseconds(args.Number("timeout-ms", 30_000));
        var watchStdin = (args.Text("stdin") ?? "watch") switch
        {
            "watch" => true,
            "ignore" => false,
            var other => throw new ArgumentException($"--stdin must be watch or ignore, got '{other}'"),
        };

        using var release = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        if (watchStdin)
        {
            _ = Task.Run(() => ReleaseOnStdinEof(release), CancellationToken.None);
        }

        var sockets = new Socket?[connections];
        var errors = new ConcurrentDictionary<string, long>();
        var closedByPeer = 0L;
        var next = -1;
        var clock = Stopwatch.StartNew();
        var openers = Enumerable.Range(0, Math.Min(concurrency, connections)).Select(opener => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < connections && !release.IsCancellationRequested)
            {
                var (socket, error) = await OpenAsync(target, exchange, timeout, release.Token).ConfigureAwait(false);
                if (socket == null)
                {
                    errors.AddOrUpdate(error!, 1, (_, n) => n + 1);
                    continue;
                }

                sockets[i] = socket;
                _ = WatchAsync(socket, () => Interlocked.Increment(ref closedByPeer), release.Token);
            }
        }, CancellationToken.None)).ToArray();
        await Task.WhenAll(openers).ConfigureAwait(false);

        var open = sockets.Count(s => s != null);
        var failed = connections - open;
        emit(PeerApp.Line(new { open, failed, errors, elapsed_ms = clock.ElapsedMilliseconds }));

        var held = Stopwatch.StartNew();
        try
        {
            await Task.Delay(Timeout.Infinite, release.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // released: close them all below
        }

        foreach (var socket in sockets)
        {
            socket?.Dispose();
        }

        emit(PeerApp.Line(new { summary = true, open, failed, closed_by_peer = Interlocked.Read(ref closedByPeer), held_ms = held.ElapsedMilliseconds }));
        return failed == 0 && Interlocked.Read(ref closedByPeer) == 0 ? 0 : 1;
    }

    private static async Task<(Socket? Socket, string? Error)> OpenAsync(IPEndPoint target, int exchange, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            await socket.ConnectAsync(target, deadline.Token).ConfigureAwait(false);
            if (exchange > 0)
            {
                await socket.SendAsync(Pattern.Block[..exchange], SocketFlags.None, deadline.Token).ConfigureAwait(false);
                var reply = new byte[exchange];
                for (var got = 0; got < exchange;)
                {
                    var n = await socket.ReceiveAsync(reply.AsMemory(got), SocketFlags.None, deadline.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        socket.Dispose();
                        return (null, "ClosedEarly");
                    }

                    got += n;
                }
            }

            return (socket, null);
        }
        catch (OperationCanceledException)
        {
            socket.Dispose();
            return (null, cancellationToken.IsCancellationRequested ? "Stopped" : "Timeout");
        }
        catch (SocketException e)
        {
            socket.Dispose();
            return (null, PeerSender.ErrorName(e));
        }
    }

    /// <summary>Waits for the peer to end the connection (EOF or reset) without holding a buffer.</summary>
    private static async Task WatchAsync(Socket socket, Action onClosed, CancellationToken released)
    {
        try
        {
            while (!released.IsCancellationRequested)
            {
                // a zero-byte receive completes when data or EOF arrives and consumes nothing
                await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, released).ConfigureAwait(false);
                if (released.IsCancellationRequested)
                {
                    return;
                }

                var probe = new byte[1];
                if (socket.Available == 0 && await socket.ReceiveAsync(probe, SocketFlags.Peek, released).ConfigureAwait(false) == 0)
                {
                    onClosed();
                    return;
                }

                // unexpected data: drain it and keep holding
                if (socket.Available > 0)
                {
                    await socket.ReceiveAsync(new byte[socket.Available], SocketFlags.None, released).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        catch (SocketException)
        {
            if (!released.IsCancellationRequested)
            {
                onClosed();
            }
        }
    }

    private static void ReleaseOnStdinEof(CancellationTokenSource release)
    {
        try
        {
            using var stdin = Console.OpenStandardInput();
            var buffer = new byte[256];
            while (stdin.Read(buffer, 0, buffer.Length) > 0)
            {
            }
        }
        catch (IOException)
        {
        }

        try
        {
            release.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // the run already ended
        }
    }
}
