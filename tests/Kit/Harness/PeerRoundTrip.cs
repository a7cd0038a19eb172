using System.Diagnostics;
using System.Net.Sockets;

namespace Weft.Harness;

/// <summary>
/// `weft app rr`: request/response latency over one kept-alive connection to an echo server (or, with
/// --rate, at a fixed rate over many: see <see cref="RunPacedAsync"/>).
/// Each round trip sends SIZE pattern bytes and waits for all SIZE to come back; prints one line
/// with percentiles in microseconds.
/// </summary>
internal static class PeerRoundTrip
{
    public static async Task<int> RunAsync(PeerArguments args, Action<string> emit, CancellationToken cancellationToken)
    {
        var target = await args.EndPointAsync("to", cancellationToken).ConfigureAwait(false);
        var size = (int)Math.Clamp(args.Number("size", 1024), 1, 16 * 1024 * 1024);
        if (args.Number("rate", 0) > 0)
        {
            return await RunPacedAsync(args, target, size, emit, cancellationToken).ConfigureAwait(false);
        }

        var count = (int)Math.Clamp(args.Number("count", 10_000), 1, 100_000_000);
        var warmup = (int)Math.Min(args.Number("warmup", Math.Min(1000, count / 10)), 10_000_000);

        using var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(target, cancellationToken).ConfigureAwait(false);
        var request = new byte[size];
        Pattern.Fill(request, 0);
        var response = new byte[size];
        var samples = new long[count];
        var i = -warmup;
        try
        {
            for (; i < count; i++)
            {
                var start = Stopwatch.GetTimestamp();
                await socket.SendAsync(request, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                for (var got = 0; got < size;)
                {
                    var n = await socket.ReceiveAsync(response.AsMemory(got), SocketFlags.None, cancellationToken).ConfigureAwait(false);
                    if (n == 0)
                    {
                        emit(PeerApp.Line(new { error = "ClosedEarly", completed = Math.Max(i, 0) }));
                        return 1;
                    }

                    got += n;
                }

                if (i >= 0)
                {
                    samples[i] = Stopwatch.GetTimestamp() - start;
                }
            }
        }
        catch (SocketException e)
        {
            // A reset mid-run is a result to report, like an early close, not a crash.
            emit(PeerApp.Line(new { error = PeerSender.ErrorName(e), completed = Math.Max(i, 0) }));
            return 1;
        }

        if (!response.AsSpan().SequenceEqual(request))
        {
            emit(PeerApp.Line(new { error = "UnexpectedReplyContent" }));
            return 1;
        }

        socket.Shutdown(SocketShutdown.Send);
        Array.Sort(samples);
        double Micros(long ticks) => Math.Round(ticks * 1_000_000.0 / Stopwatch.Frequency, 1);
        double Percentile(double p) => Micros(samples[Math.Min(count - 1, (int)Math.Ceiling(p * count) - 1)]);
        emit(PeerApp.Line(new
        {
            count,
            size,
            p50_us = Percentile(0.50),
            p90_us = Percentile(0.90),
            p99_us = Percentile(0.99),
            max_us = Micros(samples[^1]),
            mean_us = Math.Round(samples.Average(t => Micros(t)), 1),
        }));
        return 0;
    }
    /// <summary>
    /// `--rate R --connections C --seconds S`: C kept-alive connections together send R round trips a second
    /// for S seconds, each connection on its own fixed schedule (one request every C/R s, the connections
    /// spread evenly over that period). A round trip's time counts from its scheduled start, so a reply
    /// that comes late also delays and counts against the ones queued behind it. Prints one line: round
    /// trips done, the rate achieved, percentiles, and the first error if any.
    /// </summary>
    private static async Task<int> RunPacedAsync(PeerArguments args, System.Net.EndPoint target, int size, Action<string> emit, CancellationToken cancellationToken)
    {
        var rate = Math.Clamp(args.Number("rate", 1000), 1, 1_000_000);
        var connections = (int)Math.Clamp(args.Number("connections", 100), 1, 100_000);
        var seconds = Math.Clamp(args.Number("seconds", 10), 1, 86_400);
        var period = TimeSpan.FromSeconds(connections / (double)rate);
        var perConnection = (int)Math.Max(1, seconds * rate / connections);

        var sockets = new List<Socket>(connections);
        try
        {
            for (var i = 0; i < connections; i++)
            {
                var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                sockets.Add(socket);
                await socket.ConnectAsync(target, cancellationToken).ConfigureAwait(false);
            }

            var samples = new long[connections][];
            var errors = new string?[connections];
            var start = Stopwatch.GetTimestamp();
            await Task.WhenAll(sockets.Select((socket, i) => Task.Run(async () =>
            {
                var request = new byte[size];
                Pattern.Fill(request, 0);
                var response = new byte[size];
                var mine = new long[perConnection];
                var offset = period * i / connections;
                var n = 0;
                try
                {
                    for (; n < perConnection; n++)
                    {
                        var due = start + (long)((offset + period * n).TotalSeconds * Stopwatch.Frequency);
                        var wait = due - Stopwatch.GetTimestamp();
                        if (wait > 0)
                        {
                            await Task.Delay(TimeSpan.FromSeconds(wait / (double)Stopwatch.Frequency), cancellationToken).ConfigureAwait(false);
                        }

                        await socket.SendAsync(request, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                        for (var got = 0; got < size;)
                        {
                            var read = await socket.ReceiveAsync(response.AsMemory(got), SocketFlags.None, cancellationToken).ConfigureAwait(false);
                            if (read == 0)
                            {
                                errors[i] = "ClosedEarly";
                                return;
                            }

                            got += read;
                        }

                        if (!response.AsSpan().SequenceEqual(request))
                        {
                            errors[i] = "UnexpectedReplyContent";
                            return;
                        }

                        mine[n] = Stopwatch.GetTimestamp() - Math.Max(due, start);
                    }
                }
                catch (SocketException e)
                {
                    errors[i] = PeerSender.ErrorName(e);
                }
                finally
                {
                    samples[i] = mine[..n];
                }
            }, cancellationToken))).ConfigureAwait(false);
            var elapsed = Stopwatch.GetElapsedTime(start);
            var all = samples.SelectMany(x => x).ToArray();
            Array.Sort(all);
            double Micros(long ticks) => Math.Round(ticks * 1_000_000.0 / Stopwatch.Frequency, 1);
            double Percentile(double p) => all.Length == 0 ? 0 : Micros(all[Math.Min(all.Length - 1, (int)Math.Ceiling(p * all.Length) - 1)]);
            var error = errors.FirstOrDefault(e => e != null);
            emit(PeerApp.Line(new
            {
                count = all.Length,
                size,
                connections,
                rate_per_s = Math.Round(all.Length / elapsed.TotalSeconds, 1),
                seconds = Math.Round(elapsed.TotalSeconds, 3),
                p50_us = Percentile(0.50),
                p99_us = Percentile(0.99),
                max_us = all.Length == 0 ? 0 : Micros(all[^1]),
                failed_connections = errors.Count(e => e != null),
                error,
            }));
            return error == null ? 0 : 1;
        }
        catch (SocketException e)
        {
            emit(PeerApp.Line(new { error = PeerSender.ErrorName(e), connected = sockets.Count(s => s.Connected) }));
            return 1;
        }
        finally
        {
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }
        }
    }
}
