using System.Buffers;
using System.Text.Json;
using System.Threading.Channels;

namespace Weft.Gateway;

/// <summary>One answered request, as the access log writes it.</summary>
internal readonly record struct AccessLogEntry(
    DateTime Time,
    string Method,
    string Host,
    string Path,
    string Protocol,
    int Status,
    double DurationMilliseconds,
    string? Upstream,
    string? Route,
    string? Service,
    string? TraceParent,
    string? Client,
    string Flags);

/// <summary>
/// The access log: one JSON object per line per request, to stdout or a file. Requests only queue their entry;
/// a background task writes. The queue is bounded (<see cref="Capacity"/>): when the output cannot keep up,
/// entries are dropped and counted (<c>weft_gateway_access_log_dropped_total</c>) rather than slowing requests
/// or growing memory.
/// </summary>
internal sealed class AccessLog : IAsyncDisposable
{
    public const int Capacity = 16 * 1024;

    private readonly Channel<AccessLogEntry> _queue = Channel.CreateBounded<AccessLogEntry>(new BoundedChannelOptions(Capacity)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
        SingleReader = true,
    });

    private readonly Stream _output;
    private readonly bool _ownsOutput;
    private readonly GatewayMetrics _metrics;
    private readonly Task _writer;

    private AccessLog(Stream output, bool ownsOutput, GatewayMetrics metrics)
    {
        _output = output;
        _ownsOutput = ownsOutput;
        _metrics = metrics;
        _writer = Task.Run(WriteAsync);
    }

    /// <param name="target">"stdout", or a file path (appended to).</param>
    public static AccessLog Open(string target, GatewayMetrics metrics) => target == "stdout"
        ? new AccessLog(Console.OpenStandardOutput(), ownsOutput: false, metrics)
        : new AccessLog(new FileStream(target, FileMode.Append, FileAccess.Write, FileShare.ReadWrite, 64 * 1024, FileOptions.Asynchronous), ownsOutput: true, metrics);

    public void Write(in AccessLogEntry entry)
    {
        if (!_queue.Writer.TryWrite(entry))
        {
            _metrics.AccessLogDropped();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _writer.ConfigureAwait(false);
        if (_ownsOutput)
        {
            await _output.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The line for one entry, with its newline.</summary>
    internal static void Format(in AccessLogEntry entry, IBufferWriter<byte> output)
    {
        using (var json = new Utf8JsonWriter(output))
        {
            json.WriteStartObject();
            json.WriteString("time", entry.Time.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteString("method", entry.Method);
            json.WriteString("host", entry.Host);
            json.WriteString("path", entry.Path);
            json.WriteString("protocol", entry.Protocol);
            json.WriteNumber("status", entry.Status);
            json.WriteNumber("duration_ms", Math.Round(entry.DurationMilliseconds, 3));
            json.WriteString("upstream", entry.Upstream);
            json.WriteString("route", entry.Route);
            json.WriteString("service", entry.Service);
            json.WriteString("traceparent", entry.TraceParent);
            json.WriteString("client", entry.Client);
            json.WriteString("flags", entry.Flags);
            json.WriteEndObject();
        }

        output.Write("\n"u8);
    }

    private async Task WriteAsync()
    {
        var buffer = new ArrayBufferWriter<byte>(64 * 1024);
        var reader = _queue.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            // Everything queued goes out in one write: a busy gateway writes in batches, not per request.
            while (buffer.WrittenCount < 60 * 1024 && reader.TryRead(out var entry))
            {
                Format(entry, buffer);
            }

            try
            {
                await _output.WriteAsync(buffer.WrittenMemory).ConfigureAwait(false);
                await _output.FlushAsync().ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                // A closed stdout or a full disk loses log lines, never requests.
                _metrics.AccessLogDropped();
                Log.Warn("gateway", $"access log write failed: {ex.Message}");
            }

            buffer.ResetWrittenCount();
        }
    }
}
