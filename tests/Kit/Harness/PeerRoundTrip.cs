using System.Diagnostics;
using System.Net.Sockets;

namespace Weft.Harness;

/// <summary>
/// `weft app rr`: request/response latency over one kept-alive connection to an echo server.
/// Each round trip sends SIZE pattern bytes and waits for all SIZE to come back; prints one line
/// with percentiles in microseconds.
/// </summary>
internal static class PeerRoundTrip
{
    public static async Task<int> RunAsync(PeerArguments args, Action<string> emit, CancellationToken cancellationToken)
    {
        var target = await args.EndPointAsync("to", cancellationToken).ConfigureAwait(false);
        var size = (int)Math.Clamp(args.Number("size", 1024), 1, 16 * 1024 * 1024);
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
}
