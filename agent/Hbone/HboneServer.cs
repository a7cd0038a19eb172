using Weft.Hbone.Internal;

namespace Weft.Hbone;

/// <summary>
/// Serves HBONE on one accepted transport (the lead passes an SslStream after TLS 1.3 with ALPN h2).
/// </summary>
internal static class HboneServer
{
    /// <summary>
    /// Runs the HTTP/2 server side until the connection ends: each well-formed CONNECT calls
    /// <paramref name="onConnect"/> on its own task. When that task completes the request is answered
    /// 500 if it never was, and an accepted stream is disposed (END_STREAM after its buffered output).
    /// Protocol errors, bad input and transport failures end only this connection and are not thrown;
    /// cancelling <paramref name="ct"/> closes the connection and throws OperationCanceledException.
    /// Returns after every handler has finished. The transport is disposed.
    /// </summary>
    /// <param name="drain">
    /// When cancelled, the connection says GOAWAY (NO_ERROR): the client takes new streams elsewhere, the
    /// streams already taken carry on, and the connection ends with the last of them (an agent being replaced).
    /// </param>
    public static async Task RunConnectionAsync(Stream transport, Func<HboneRequest, Task> onConnect, HboneSettings settings, CancellationToken ct,
        CancellationToken drain = default)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(onConnect);
        var connection = new Http2Connection(transport, settings, isClient: false, onConnect);
        using CancellationTokenRegistration registration = ct.Register(() => connection.Abort(null));
        try
        {
            await connection.SendPrefaceAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            connection.Abort(new HboneException("sending SETTINGS failed: " + e.Message, inner: e));
        }

        // After our SETTINGS: a GOAWAY may not come first.
        using CancellationTokenRegistration draining = drain.Register(() => _ = connection.GoAwayGracefullyAsync());
        await connection.RunAsync().ConfigureAwait(false);
        await connection.WaitForHandlersAsync().ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
    }
}
