using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace Weft.Harness;

/// <summary>
/// `weft app serve`: accepts until stopped, each connection on its own task.
/// hash: read to EOF hashing, reply N pattern bytes, close. echo: echo to EOF, then half-close.
/// reset: read the first bytes, then close with linger 0 (RST).
/// Prints {"listening":"ip:port"} once, then one line per finished connection.
/// </summary>
internal static class PeerServer
{
    public static async Task<int> RunAsync(PeerArguments args, Action<string> emit, CancellationToken cancellationToken)
    {
        var port = args.Number("port") is { } p and <= 65535 ? (int)p : throw new ArgumentException("--port P (0-65535) is required");
        var bind = IPAddress.TryParse(args.Text("bind") ?? "0.0.0.0", out var address) ? address : throw new ArgumentException("--bind needs an IP address");
        var mode = args.Text("mode") ?? "hash";
        if (mode is not ("hash" or "echo" or "reset"))
        {
            throw new ArgumentException($"--mode must be hash, echo or reset, got '{mode}'");
        }

        var replyBytes = args.Number("reply-bytes", 0);

        using var listener = new Socket(bind.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        if (bind.Equals(IPAddress.IPv6Any))
        {
            listener.DualMode = true;
        }

        listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        listener.Bind(new IPEndPoint(bind, port));
        listener.Listen(4096);
        emit(PeerApp.Line(new { listening = PeerApp.Format(listener.LocalEndPoint), mode }));

        var open = 0;
        try
        {
            while (true)
            {
                var connection = await listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
                Interlocked.Increment(ref open);
                _ = Task.Run(async () =>
                {
                    try
                    {
                        await HandleAsync(connection, mode, replyBytes, emit, cancellationToken).ConfigureAwait(false);
                    }
                    finally
                    {
                        Interlocked.Decrement(ref open);
                    }
                }, CancellationToken.None);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // stopped: let connections in flight finish their line for a moment
            for (var i = 0; i < 20 && Volatile.Read(ref open) > 0; i++)
            {
                await Task.Delay(50, CancellationToken.None).ConfigureAwait(false);
            }

            return 0;
        }
    }

    private static async Task HandleAsync(Socket socket, string mode, long replyBytes, Action<string> emit, CancellationToken cancellationToken)
    {
        var remote = PeerApp.Format(socket.RemoteEndPoint);
        var local = PeerApp.Format(socket.LocalEndPoint);
        var buffer = ArrayPool<byte>.Shared.Rent(Pattern.BlockSize);
        long received = 0;
        long sent = 0;
        string? error = null;
        string? sha256 = null;
        try
        {
            socket.NoDelay = true;
            switch (mode)
            {
                case "hash":
                    using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
                    {
                        int n;
                        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false)) > 0)
                        {
                            hash.AppendData(buffer, 0, n);
                            received += n;
                        }

                        sha256 = Convert.ToHexStringLower(hash.GetHashAndReset());
                    }

                    sent = await PeerSender.SendPatternAsync(socket, replyBytes, cancellationToken).ConfigureAwait(false);
                    socket.Shutdown(SocketShutdown.Send);
                    break;

                case "echo":
                    int read;
                    while ((read = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false)) > 0)
                    {
                        received += read;
                        await socket.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, cancellationToken).ConfigureAwait(false);
                        sent += read;
                    }

                    socket.Shutdown(SocketShutdown.Send);
                    break;

                case "reset":
                    received = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);

                    // linger 0: close sends RST instead of FIN
                    socket.LingerState = new LingerOption(true, 0);
                    break;
            }
        }
        catch (SocketException e)
        {
            error = PeerSender.ErrorName(e);
        }
        catch (OperationCanceledException)
        {
            error = "Stopped";
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            socket.Dispose();
        }

        emit(PeerApp.Line(new { remote, local, received, sha256, sent, error }));
    }
}
