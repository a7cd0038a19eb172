using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace Weft.Harness;

/// <summary>
/// `weft app send`: C connections, K at a time. Each connects, optionally holds, sends N pattern bytes
/// while reading the reply, half-closes, reads to EOF. One line per connection, then a summary line.
/// </summary>
internal static class PeerSender
{
    public static async Task<int> RunAsync(PeerArguments args, Action<string> emit, CancellationToken cancellationToken)
    {
        var target = await args.EndPointAsync("to", cancellationToken).ConfigureAwait(false);
        var bytes = args.Number("bytes") ?? throw new ArgumentException("--bytes N is required");
        var connections = args.Number("connections", 1);
        var concurrency = (int)Math.Clamp(args.Number("concurrency", Math.Min(connections, 100)), 1, 100_000);
        var hold = TimeSpan.FromMilliseconds(args.Number("hold-ms", 0));
        var expectReply = args.Number("expect-reply-bytes");
        var timeout = TimeSpan.FromMilliseconds(args.Number("timeout-ms", 30_000));

        var next = -1L;
        var ok = 0L;
        var failed = 0L;
        var errors = new System.Collections.Concurrent.ConcurrentDictionary<string, long>();
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, (int)Math.Min(concurrency, Math.Max(connections, 1))).Select(_ => Task.Run(async () =>
        {
            long i;
            while (!cancellationToken.IsCancellationRequested && (i = Interlocked.Increment(ref next)) < connections)
            {
                var result = await ConnectOnceAsync(i, target, bytes, hold, expectReply, timeout, cancellationToken).ConfigureAwait(false);
                if (result.error == null)
                {
                    Interlocked.Increment(ref ok);
                }
                else
                {
                    Interlocked.Increment(ref failed);
                    errors.AddOrUpdate(result.error, 1, (_, n) => n + 1);
                }

                emit(PeerApp.Line(result));
            }
        }, CancellationToken.None)).ToArray();
        await Task.WhenAll(workers).ConfigureAwait(false);

        emit(PeerApp.Line(new { summary = true, ok, failed, errors, elapsed_ms = clock.ElapsedMilliseconds }));
        return failed == 0 ? 0 : 1;
    }

    internal static async Task<long> SendPatternAsync(Socket socket, long count, CancellationToken cancellationToken)
    {
        long sent = 0;
        while (sent < count)
        {
            var position = (int)(sent % Pattern.BlockSize);
            var chunk = Pattern.Block.Slice(position, (int)Math.Min(Pattern.BlockSize - position, count - sent));
            sent += await socket.SendAsync(chunk, SocketFlags.None, cancellationToken).ConfigureAwait(false);
        }

        return sent;
    }

    internal static string ErrorName(SocketException e) => e.SocketErrorCode switch
    {
        SocketError.ConnectionRefused => "ConnectionRefused",

        // EPIPE (reported as Shutdown) only follows a reset here: this side never shuts down before sending
        SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted => "ConnectionReset",
        SocketError.TimedOut => "Timeout",
        var other => other.ToString(),
    };

    private static async Task<ConnectionResult> ConnectOnceAsync(
        long i, IPEndPoint target, long bytes, TimeSpan hold, long? expectReply, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout + hold);
        var token = deadline.Token;
        var buffer = ArrayPool<byte>.Shared.Rent(Pattern.BlockSize);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        string? local = null;
        long sent = 0;
        long received = 0;
        string? error = null;
        var clock = Stopwatch.StartNew();
        long connectMicros = 0;
        try
        {
            await socket.ConnectAsync(target, token).ConfigureAwait(false);
            connectMicros = (long)clock.Elapsed.TotalMicroseconds;
            local = PeerApp.Format(socket.LocalEndPoint);
            if (hold > TimeSpan.Zero)
            {
                await Task.Delay(hold, token).ConfigureAwait(false);
            }

            // send while reading: an echoing peer would otherwise block on a full window
            var sending = Task.Run(async () =>
            {
                while (sent < bytes)
                {
                    var position = (int)(sent % Pattern.BlockSize);
                    var chunk = Pattern.Block.Slice(position, (int)Math.Min(Pattern.BlockSize - position, bytes - sent));
                    sent += await socket.SendAsync(chunk, SocketFlags.None, token).ConfigureAwait(false);
                }

                socket.Shutdown(SocketShutdown.Send);
            }, CancellationToken.None);
            try
            {
                int n;
                while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, token).ConfigureAwait(false)) > 0)
                {
                    hash.AppendData(buffer, 0, n);
                    received += n;
                }
            }
            finally
            {
                // a reset can end the read while the send still runs: wait for it, keep its error
                // unless the read's own error (handled below) replaces it
                try
                {
                    await sending.ConfigureAwait(false);
                }
                catch (SocketException e)
                {
                    error = ErrorName(e);
                }
                catch (OperationCanceledException)
                {
                    error = cancellationToken.IsCancellationRequested ? "Stopped" : "Timeout";
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            error = "Timeout";
        }
        catch (OperationCanceledException)
        {
            error = "Stopped";
        }
        catch (SocketException e)
        {
            error = ErrorName(e);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        var receivedSha256 = Convert.ToHexStringLower(hash.GetHashAndReset());
        if (error == null && expectReply is { } expected)
        {
            error = received != expected ? "UnexpectedReplyLength"
                : receivedSha256 != Pattern.Sha256(expected) ? "UnexpectedReplyContent"
                : null;
        }

        return new ConnectionResult(
            i, local, PeerApp.Format(target), sent, received, receivedSha256, error, connectMicros, (long)clock.Elapsed.TotalMicroseconds);
    }

    // field names are the JSON keys tests and scripts read
    private sealed record ConnectionResult(
        long i, string? local, string? remote, long sent, long received, string received_sha256, string? error, long connect_us, long duration_us);
}
