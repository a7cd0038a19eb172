using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;

namespace Weft.Gateway;

/// <summary>
/// HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on one plain listener. Kestrel in .NET 10 speaks h2c on a cleartext
/// endpoint only when the endpoint speaks HTTP/2 alone (dotnet/aspnetcore#56984), so each plain listener has a twin: an
/// HTTP/2-only endpoint on 127.0.0.1, port 0, whose HTTP pipeline <see cref="Capture"/> keeps. <see cref="Sniff"/>, on the
/// plain listener, looks at a connection's first bytes without taking them: the 24-byte HTTP/2 connection preface (RFC 9113,
/// 3.4) hands the connection to the twin's pipeline, anything else (a request line differs by its first or second byte)
/// to HTTP/1.1. Kestrel's own timers start only once a pipeline has the connection, so the wait here has its own: the
/// keep-alive timeout for the first bytes, as Kestrel gives a new connection, and the request headers timeout for the rest
/// of a preface that has begun.
/// </summary>
internal sealed class H2cPriorKnowledge(TimeSpan firstBytesTimeout, TimeSpan prefaceTimeout, GatewayMetrics metrics)
{
    private ConnectionDelegate? _http2;

    private static ReadOnlySpan<byte> Preface => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;

    /// <summary>On the twin endpoint, innermost: keeps its HTTP/2 pipeline for <see cref="Sniff"/>.</summary>
    public ConnectionDelegate Capture(ConnectionDelegate next)
    {
        _http2 = next;
        return next;
    }

    /// <summary>On the plain listener, innermost: h2c to the twin's pipeline, the rest to this listener's HTTP/1.1.</summary>
    public ConnectionDelegate Sniff(ConnectionDelegate next) => async connection =>
    {
        var http2 = await IsHttp2Async(connection.Transport.Input).ConfigureAwait(false);
        if (http2 is null)
        {
            return;
        }

        await (http2.Value && _http2 is { } pipeline ? pipeline(connection) : next(connection)).ConfigureAwait(false);
    };

    /// <summary>Whether the connection opens with the HTTP/2 preface, its bytes left unread; null when it was cut on a timeout (counted).</summary>
    private async Task<bool?> IsHttp2Async(PipeReader input)
    {
        // Disposed once the connection has chosen: a held connection keeps no timer.
        using var timeout = new CancellationTokenSource(firstBytesTimeout);
        var begun = false;
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                var http2 = StartsWithPreface(buffer);
                input.AdvanceTo(buffer.Start, http2 is null ? buffer.End : buffer.Start);
                if (http2 is { } known)
                {
                    return known;
                }

                if (result.IsCompleted || result.IsCanceled)
                {
                    // The client closed within a preface: HTTP/1.1 sees the same bytes and the end, and answers as it does.
                    return false;
                }

                if (!begun)
                {
                    begun = true;
                    timeout.CancelAfter(prefaceTimeout);
                }
            }
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested)
        {
            metrics.ClientCut(begun ? "request_headers_timeout" : "keep_alive_timeout");
            return null;
        }
    }

    /// <summary>True: the preface, whole; false: not it; null: a beginning of it, wait for more.</summary>
    internal static bool? StartsWithPreface(ReadOnlySequence<byte> buffer)
    {
        Span<byte> first = stackalloc byte[Preface.Length];
        var length = (int)Math.Min(buffer.Length, Preface.Length);
        buffer.Slice(0, length).CopyTo(first);
        if (!first[..length].SequenceEqual(Preface[..length]))
        {
            return false;
        }

        return length == Preface.Length ? true : null;
    }
}
