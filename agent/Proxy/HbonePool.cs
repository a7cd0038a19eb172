using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Weft.Hbone;
using Weft.Identity;

namespace Weft.Proxy;

/// <summary>
/// HBONE tunnels to other nodes' pods, pooled per (source identity, destination identity, destination
/// address): a new stream reuses a tunnel with room (at most 100 streams each) before a new TLS
/// handshake is made. Tunnels are dialled from inside the source pod's netns, so the network sees
/// the pod, not the node.
/// </summary>
internal sealed class HbonePool
{
    public const int TunnelPort = 15008;

    // Callers racing for the last free stream of a tunnel lose it at most this often before giving up.
    private const int MaxAttempts = 8;

    private readonly ConcurrentDictionary<(SpiffeId Source, SpiffeId Destination, IPAddress Address), Entry> _entries = new();
    private readonly IdentityManager _identity;
    private readonly ProxyOptions _options;
    private readonly IPodSockets _sockets;
    private readonly HboneSettings _settings;

    public HbonePool(IdentityManager identity, ProxyOptions options, IPodSockets sockets)
    {
        _identity = identity;
        _options = options;
        _sockets = sockets;
        _settings = options.Tunnel();
    }

    /// <summary>How long the last new tunnel's TCP connect and TLS handshake took (for the flow record).</summary>
    public readonly record struct Opened(HboneStream Stream, TimeSpan? Handshake);

    public async Task<Opened> OpenStreamAsync(LocalPod source, SpiffeId sourceId, SpiffeId destinationId, IPAddress address,
        string authority, IEnumerable<KeyValuePair<string, string>> headers, CancellationToken cancellationToken)
    {
        var entry = _entries.GetOrAdd((sourceId, destinationId, address), _ => new Entry());
        for (var attempt = 0; ; attempt++)
        {
            TimeSpan? handshake = null;
            var tunnel = entry.TryPick();
            if (tunnel is null)
            {
                await entry.Dialing.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    // Another caller may have dialled while we waited.
                    tunnel = entry.TryPick();
                    if (tunnel is null)
                    {
                        var started = Stopwatch.GetTimestamp();
                        tunnel = await DialAsync(source, sourceId, destinationId, address, cancellationToken).ConfigureAwait(false);
                        handshake = Stopwatch.GetElapsedTime(started);
                        entry.Add(tunnel);
                    }
                }
                finally
                {
                    entry.Dialing.Release();
                }
            }

            try
            {
                var stream = await tunnel.ConnectAsync(authority, headers, cancellationToken).ConfigureAwait(false);
                return new Opened(stream, handshake);
            }
            catch (HboneException e) when (e.IsRetryable && attempt < MaxAttempts)
            {
                // The tunnel filled up or is going away (GOAWAY) under us: its live streams carry on,
                // and the next pick skips it (CanOpenStream is false) or dials a new one.
            }
        }
    }

    private async Task<HboneClientConnection> DialAsync(LocalPod source, SpiffeId sourceId, SpiffeId destinationId,
        IPAddress address, CancellationToken cancellationToken)
    {
        var socket = await _sockets.ConnectAsync(source, new IPEndPoint(address, TunnelPort), _options, cancellationToken).ConfigureAwait(false);
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
        try
        {
            string? refusal = null;
            var options = _identity.Tls.ClientOptions(_identity.Get(sourceId), destinationId, (_, reason) => refusal = reason);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(_options.ConnectTimeout);
            try
            {
                await ssl.AuthenticateAsClientAsync(options, timeout.Token).ConfigureAwait(false);
                if (ssl.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
                {
                    throw new AuthenticationException("server did not negotiate ALPN h2");
                }
            }
            catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                throw new TunnelException($"TLS to {address}:{TunnelPort} as {sourceId}: {refusal ?? e.Message}", refusal is not null);
            }

            return await HboneClientConnection.StartAsync(ssl, _settings, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private sealed class Entry
    {
        private readonly List<HboneClientConnection> _tunnels = [];

        public SemaphoreSlim Dialing { get; } = new(1, 1);

        public HboneClientConnection? TryPick()
        {
            lock (_tunnels)
            {
                _tunnels.RemoveAll(t => t.Completion.IsCompleted);
                foreach (var tunnel in _tunnels)
                {
                    if (tunnel.CanOpenStream)
                    {
                        return tunnel;
                    }
                }

                return null;
            }
        }

        public void Add(HboneClientConnection tunnel)
        {
            lock (_tunnels)
            {
                _tunnels.Add(tunnel);
            }
        }
    }
}

/// <summary>A tunnel could not be opened; <see cref="IsTls"/> when the peer's identity or TLS failed.</summary>
internal sealed class TunnelException(string message, bool isTls) : Exception(message)
{
    public bool IsTls { get; } = isTls;
}
