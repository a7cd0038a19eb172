using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace Weft.Harness;

/// <summary>
/// `weft app send`: C connections, K at a time. Each connects, optionally holds, sends N pattern bytes
/// while reading the reply, half-closes, reads to EOF. One line per connection, then a summary line.
/// <c>--rate R</c> starts connection i no earlier than i/R seconds after the first (a steady arrival rate,
/// K bounding how many are in flight); <c>--quiet 1</c> prints only failed connections and a summary with
/// duration percentiles, and with <c>--progress-seconds S</c> a progress line every S seconds (how many are done,
/// failed and in flight), so a run that falls behind or stalls shows where.
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
        var rate = args.Number("rate", 0);
        var quiet = args.Number("quiet", 0) != 0;
        var progressEvery = TimeSpan.FromSeconds(args.Number("progress-seconds", 0));
        var durations = quiet ? new long[connections] : null;
        var late = 0L;

        var next = -1L;
        var ok = 0L;
        var failed = 0L;
        var errors = new System.Collections.Concurrent.ConcurrentDictionary<string, long>();
        var clock = Stopwatch.StartNew();
        var started = 0L;
        using var progressStop = new CancellationTokenSource();
        var progress = progressEvery > TimeSpan.Zero
            ? Task.Run(async () =>
            {
                using var timer = new PeriodicTimer(progressEvery);
                while (await timer.WaitForNextTickAsync(progressStop.Token).ConfigureAwait(false))
                {
                    var (done, bad) = (Interlocked.Read(ref ok), Interlocked.Read(ref failed));
                    emit(PeerApp.Line(new
                    {
                        progress = true,
                        ok = done,
                        failed = bad,
                        in_flight = Interlocked.Read(ref started) - done - bad,
                        late_starts = Interlocked.Read(ref late),
                        elapsed_ms = clock.ElapsedMilliseconds,
                        errors
                    }));
                }
            }, CancellationToken.None)
            : Task.CompletedTask;
        var workers = Enumerable.Range(0, (int)Math.Min(concurrency, Math.Max(connections, 1))).Select(_ => Task.Run(async () =>
        {
            long i;
            while (!cancellationToken.IsCancellationRequested && (i = Interlocked.Increment(ref next)) < connections)
            {
                if (rate > 0)
                {
                    var due = TimeSpan.FromSeconds(i / (double)rate) - clock.Elapsed;
                    if (due > TimeSpan.Zero)
                    {
                        await Task.Delay(due, cancellationToken).ConfigureAwait(false);
                    }
                    else if (due < TimeSpan.FromMilliseconds(-100))
                    {
                        // every worker was busy: this one starts later than the rate asks
                        Interlocked.Increment(ref late);
                    }
                }

                Interlocked.Increment(ref started);
                var result = await ConnectOnceAsync(i, target, bytes, hold, expectReply, timeout, cancellationToken).ConfigureAwait(false);
                if (durations is not null)
                {
                    durations[i] = result.duration_us;
                }

                if (result.error == null)
                {
                    Interlocked.Increment(ref ok);
                }
                else
                {
                    Interlocked.Increment(ref failed);
                    errors.AddOrUpdate(result.error, 1, (_, n) => n + 1);
                }

                if (!quiet || result.error != null)
                {
                    emit(PeerApp.Line(result));
                }
            }
        }, CancellationToken.None)).ToArray();
        try
        {
            await Task.WhenAll(workers).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // stopped: the summary says how far it got
        }

        await progressStop.CancelAsync().ConfigureAwait(false);
        try
        {
            await progress.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // the progress lines end with the run
        }

        if (durations is not null)
        {
            var done = durations.Where(d => d > 0).Order().ToArray();
            long Percentile(double p) => done.Length == 0 ? 0 : done[Math.Min(done.Length - 1, (int)Math.Ceiling(p * done.Length) - 1)];
            emit(PeerApp.Line(new
            {
                summary = true,
                ok,
                failed,
                errors,
                elapsed_ms = clock.ElapsedMilliseconds,
                late_starts = late,
                duration_p50_us = Percentile(0.50),
                duration_p99_us = Percentile(0.99),
                duration_max_us = done.Length == 0 ? 0 : done[^1]
            }));
        }
        else
        {
            emit(PeerApp.Line(new { summary = true, ok, failed, errors, elapsed_ms = clock.ElapsedMilliseconds }));
        }

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
