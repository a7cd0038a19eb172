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
/// HBONE tunnels to other nodes' pods, pooled per (source pod, destination identity, destination
/// address): a new stream reuses a tunnel with room (at most 100 streams each) before a new TLS
/// handshake is made. A tunnel is dialled from inside its source pod's netns, so the network sees that
/// pod, never another pod with the same service account; a pod's tunnels close when it leaves (those
/// still carrying streams once their streams end), and a tunnel that carried nothing for
/// <see cref="ProxyOptions.TunnelIdleTimeout"/> closes, so the pool holds only what is in use. One pod
/// holds at most <see cref="ProxyOptions.MaxTunnelsPerPod"/>: a new dial past it first closes the pod's
/// least recently used idle tunnel, and with none idle the connection is refused (<see cref="TunnelPoolFullException"/>).
/// </summary>
internal sealed class HbonePool : IDisposable
{
    public const int TunnelPort = 15008;

    // Callers racing for the last free stream of a tunnel lose it at most this often before giving up.
    private const int MaxAttempts = 8;

    private readonly ConcurrentDictionary<Key, Entry> _entries = new();

    // Per source pod: the gate its dials count and evict under, and how many of its dials are in flight.
    private readonly ConcurrentDictionary<(string Pod, ulong NetnsCookie), SourcePod> _sources = new();

    // Tunnels of pods that left, still carrying streams: closed by the sweep once their streams end.
    private readonly List<HboneClientConnection> _draining = [];
    private readonly IdentityManager _identity;
    private readonly ProxyOptions _options;
    private readonly IPodSockets _sockets;
    private readonly HboneSettings _settings;
    private readonly Timer _sweep;
    private long _idleClosed;
    private long _evicted;
    private long _refused;

    public HbonePool(IdentityManager identity, ProxyOptions options, IPodSockets sockets)
    {
        _identity = identity;
        _options = options;
        _sockets = sockets;
        _settings = options.Tunnel();
        FirstBytesBudget = new FirstBytesBudget(options.MaxFirstBytesHeld);
        var period = TimeSpan.FromTicks(Math.Clamp(options.TunnelIdleTimeout.Ticks / 4, TimeSpan.FromMilliseconds(50).Ticks, TimeSpan.FromSeconds(30).Ticks));
        _sweep = new Timer(_ => Sweep(), null, period, period);
    }

    /// <summary>How long the last new tunnel's TCP connect and TLS handshake took (for the flow record).</summary>
    public readonly record struct Opened(HboneStream Stream, TimeSpan? Handshake);

    // The pod by name and netns: a pod re-created under the same name is another pod.
    private readonly record struct Key(string Pod, ulong NetnsCookie, SpiffeId Destination, IPAddress Address);

    /// <summary>Tunnels open now (pooled and draining).</summary>
    public int OpenTunnels
    {
        get
        {
            var count = 0;
            foreach (var entry in _entries.Values)
            {
                count += entry.Count;
            }

            lock (_draining)
            {
                return count + _draining.Count;
            }
        }
    }

    /// <summary>Tunnels closed because they carried nothing for the idle timeout or their pod left.</summary>
    public long IdleClosed => Interlocked.Read(ref _idleClosed);

    /// <summary>Idle tunnels closed to make room for a new one of the same pod (at <see cref="ProxyOptions.MaxTunnelsPerPod"/>).</summary>
    public long Evicted => Interlocked.Read(ref _evicted);

    /// <summary>Connections refused because their pod held its limit of tunnels and none was idle.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>The buffers new outbound connections hold their first bytes in while their streams open.</summary>
    public FirstBytesBudget FirstBytesBudget { get; }

    /// <summary>
    /// Opens a stream in a pooled tunnel, dialling one when none has room; <paramref name="first"/>, when given, is read
    /// once the tunnel is at hand and goes with the request (again with a retry), or, when the client had sent nothing
    /// yet, as soon as it comes before the answer.
    /// </summary>
    public async Task<Opened> OpenStreamAsync(LocalPod source, SpiffeId sourceId, SpiffeId destinationId, IPAddress address,
        string authority, IEnumerable<KeyValuePair<string, string>> headers, CancellationToken cancellationToken, FirstBytes? first = null)
    {
        var key = new Key(source.Key, source.NetnsCookie, destinationId, address);
        for (var attempt = 0; ; attempt++)
        {
            TimeSpan? handshake = null;
            var entry = _entries.GetOrAdd(key, _ => new Entry());
            var pooled = entry.TryPick();
            if (pooled is null)
            {
                await entry.Dialing.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    // Another caller may have dialled while we waited.
                    pooled = entry.TryPick();
                    if (pooled is null)
                    {
                        var started = Stopwatch.GetTimestamp();
                        pooled = await DialWithinLimitAsync(key, source, sourceId, cancellationToken).ConfigureAwait(false);
                        handshake = Stopwatch.GetElapsedTime(started);
                    }
                }
                finally
                {
                    entry.Dialing.Release();
                }
            }

            try
            {
                var stream = await pooled.Tunnel.ConnectAsync(authority, headers, cancellationToken, first?.Read() ?? default, first is null ? null : first.LaterAsync)
                    .ConfigureAwait(false);
                return new Opened(stream, handshake);
            }
            catch (HboneException e) when (e.IsRetryable && attempt < MaxAttempts)
            {
                // The tunnel filled up or is going away (GOAWAY) under us: its live streams carry on,
                // and the next pick skips it (CanOpenStream is false) or dials a new one.
            }
            finally
            {
                pooled.DoneOpening();
            }
        }
    }

    /// <summary>
    /// Dials a tunnel for <paramref name="key"/> and pools it, keeping its pod within
    /// <see cref="ProxyOptions.MaxTunnelsPerPod"/>: at the limit the pod's least recently used idle
    /// tunnel closes first; with none idle, <see cref="TunnelPoolFullException"/>.
    /// </summary>
    private async Task<Pooled> DialWithinLimitAsync(Key key, LocalPod source, SpiffeId sourceId, CancellationToken cancellationToken)
    {
        var pod = _sources.GetOrAdd((key.Pod, key.NetnsCookie), _ => new SourcePod());
        HboneClientConnection? evict = null;
        lock (pod)
        {
            var held = pod.Dialing;
            Entry? idlestEntry = null;
            Pooled? idlest = null;
            foreach (var (other, entry) in _entries)
            {
                if (other.Pod == key.Pod && other.NetnsCookie == key.NetnsCookie)
                {
                    held += entry.CountIdlest(ref idlest, out var found);
                    if (found)
                    {
                        idlestEntry = entry;
                    }
                }
            }

            if (held >= _options.MaxTunnelsPerPod)
            {
                if (idlestEntry is null || !idlestEntry.TryTakeIdle(idlest!))
                {
                    Interlocked.Increment(ref _refused);
                    throw new TunnelPoolFullException($"pod {key.Pod} holds its limit of {_options.MaxTunnelsPerPod} tunnels and none is idle (--max-tunnels-per-pod)");
                }

                evict = idlest!.Tunnel;
                Interlocked.Increment(ref _evicted);
            }

            pod.Dialing++;
        }

        if (evict is not null)
        {
            _ = evict.DisposeAsync().AsTask();
        }

        try
        {
            var tunnel = await DialAsync(source, sourceId, key.Destination, key.Address, cancellationToken).ConfigureAwait(false);

            // Pooled and no longer dialling in one step, so a concurrent count sees it exactly once.
            lock (pod)
            {
                pod.Dialing--;
                return Keep(key, tunnel);
            }
        }
        catch
        {
            lock (pod)
            {
                pod.Dialing--;
            }

            throw;
        }
    }

    /// <summary>
    /// The pod left: its tunnels take no new stream; those carrying none close now, the others once
    /// their last stream ends.
    /// </summary>
    public void Release(LocalPod pod)
    {
        _sources.TryRemove((pod.Key, pod.NetnsCookie), out _);
        foreach (var (key, entry) in _entries)
        {
            if (key.Pod == pod.Key && key.NetnsCookie == pod.NetnsCookie && _entries.TryRemove(new(key, entry)))
            {
                foreach (var tunnel in entry.Retire())
                {
                    if (tunnel.ActiveStreams == 0)
                    {
                        Close(tunnel);
                    }
                    else
                    {
                        lock (_draining)
                        {
                            _draining.Add(tunnel);
                        }
                    }
                }
            }
        }
    }

    public void Dispose() => _sweep.Dispose();

    // Pooled under the key, already counted as opening a stream for its dialler; an entry the sweep
    // retired meanwhile is replaced, so no open tunnel is ever outside the pool (where nothing would close it).
    private Pooled Keep(Key key, HboneClientConnection tunnel)
    {
        var entry = _entries.GetOrAdd(key, _ => new Entry());
        Pooled? pooled;
        while ((pooled = entry.TryAdd(tunnel)) is null)
        {
            _entries.TryRemove(new(key, entry));
            entry = _entries.GetOrAdd(key, _ => new Entry());
        }

        return pooled;
    }

    private void Sweep()
    {
        var idleSince = Stopwatch.GetTimestamp() - (long)(_options.TunnelIdleTimeout.TotalSeconds * Stopwatch.Frequency);
        foreach (var (key, entry) in _entries)
        {
            var idle = entry.TakeIdle(idleSince, out var empty);
            foreach (var tunnel in idle)
            {
                Close(tunnel);
            }

            if (empty && entry.TryRetireEmpty())
            {
                _entries.TryRemove(new(key, entry));
            }
        }

        List<HboneClientConnection> done;
        lock (_draining)
        {
            done = _draining.FindAll(t => t.ActiveStreams == 0 || t.Completion.IsCompleted);
            _draining.RemoveAll(done.Contains);
        }

        foreach (var tunnel in done)
        {
            Close(tunnel);
        }
    }

    private void Close(HboneClientConnection tunnel)
    {
        Interlocked.Increment(ref _idleClosed);
        _ = tunnel.DisposeAsync().AsTask();
    }

    private async Task<HboneClientConnection> DialAsync(LocalPod source, SpiffeId sourceId, SpiffeId destinationId,
        IPAddress address, CancellationToken cancellationToken)
    {
        // Before connecting: a pod whose first certificate is still being issued waits here (bounded), holding no socket.
        var svid = await _identity.GetAsync(sourceId, cancellationToken).ConfigureAwait(false);
        var socket = await _sockets.ConnectAsync(source, new IPEndPoint(address, TunnelPort), _options, cancellationToken).ConfigureAwait(false);
        var transport = new TunnelSocketStream(socket);
        var ssl = new TunnelTlsStream(transport);
        try
        {
            string? refusal = null;
            var options = _identity.Tls.ClientOptions(svid, destinationId, (_, reason) => refusal = reason);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(_options.ConnectTimeout);
            try
            {
                await ssl.AuthenticateAsClientAsync(options, timeout.Token).ConfigureAwait(false);
                if (ssl.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
                {
                    throw new AuthenticationException("server did not negotiate ALPN h2");
                }

                transport.ReadOnWatch();
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

    /// <summary>
    /// One pooled tunnel: when it last took a new stream, and how many callers picked it and are opening
    /// one now (a tunnel being opened on is never idle, though its stream does not count yet).
    /// </summary>
    private sealed class Pooled(HboneClientConnection tunnel)
    {
        private int _opening = 1;

        public HboneClientConnection Tunnel { get; } = tunnel;

        public long LastUsed { get; private set; } = Stopwatch.GetTimestamp();

        public bool IsIdle => Volatile.Read(ref _opening) == 0 && Tunnel.ActiveStreams == 0;

        /// <summary>Called under the entry's lock when a caller picks this tunnel.</summary>
        public void Picked()
        {
            Interlocked.Increment(ref _opening);
            LastUsed = Stopwatch.GetTimestamp();
        }

        public void DoneOpening() => Interlocked.Decrement(ref _opening);
    }

    /// <summary>The tunnels of one key.</summary>
    private sealed class Entry
    {
        private readonly List<Pooled> _tunnels = [];
        private bool _retired;

        public SemaphoreSlim Dialing { get; } = new(1, 1);

        public int Count
        {
            get
            {
                lock (_tunnels)
                {
                    return _tunnels.Count;
                }
            }
        }

        public Pooled? TryPick()
        {
            lock (_tunnels)
            {
                _tunnels.RemoveAll(t => t.Tunnel.Completion.IsCompleted);
                foreach (var pooled in _tunnels)
                {
                    if (pooled.Tunnel.CanOpenStream)
                    {
                        pooled.Picked();
                        return pooled;
                    }
                }

                return null;
            }
        }

        /// <summary>The open tunnels; <paramref name="idlest"/> becomes this entry's least recently used idle one when older (<paramref name="found"/>).</summary>
        public int CountIdlest(ref Pooled? idlest, out bool found)
        {
            found = false;
            lock (_tunnels)
            {
                var open = 0;
                foreach (var pooled in _tunnels)
                {
                    if (pooled.Tunnel.Completion.IsCompleted)
                    {
                        continue;
                    }

                    open++;
                    if (pooled.IsIdle && (idlest is null || pooled.LastUsed < idlest.LastUsed))
                    {
                        (idlest, found) = (pooled, true);
                    }
                }

                return open;
            }
        }

        /// <summary>Takes <paramref name="pooled"/> out when it is still idle (nobody picked it since it was found).</summary>
        public bool TryTakeIdle(Pooled pooled)
        {
            lock (_tunnels)
            {
                return pooled.IsIdle && _tunnels.Remove(pooled);
            }
        }

        /// <summary>Null when the entry left the pool (its pod left, or the sweep removed it empty).</summary>
        public Pooled? TryAdd(HboneClientConnection tunnel)
        {
            lock (_tunnels)
            {
                if (_retired)
                {
                    return null;
                }

                var pooled = new Pooled(tunnel);
                _tunnels.Add(pooled);
                return pooled;
            }
        }

        /// <summary>Tunnels that carry no stream and took none since <paramref name="idleSince"/>, taken out of the entry.</summary>
        public List<HboneClientConnection> TakeIdle(long idleSince, out bool empty)
        {
            var idle = new List<HboneClientConnection>();
            lock (_tunnels)
            {
                _tunnels.RemoveAll(t =>
                {
                    if (t.Tunnel.Completion.IsCompleted)
                    {
                        return true;
                    }

                    if (t.IsIdle && t.LastUsed < idleSince)
                    {
                        idle.Add(t.Tunnel);
                        return true;
                    }

                    return false;
                });
                empty = _tunnels.Count == 0;
            }

            return idle;
        }

        public bool TryRetireEmpty()
        {
            lock (_tunnels)
            {
                _retired = _tunnels.Count == 0;
                return _retired;
            }
        }

        public List<HboneClientConnection> Retire()
        {
            lock (_tunnels)
            {
                _retired = true;
                var tunnels = _tunnels.Select(t => t.Tunnel).Where(t => !t.Completion.IsCompleted).ToList();
                _tunnels.Clear();
                return tunnels;
            }
        }
    }

    /// <summary>A source pod's count of tunnel dials in flight; the object is also the gate its limit is kept under.</summary>
    private sealed class SourcePod
    {
        public int Dialing { get; set; }
    }
}

/// <summary>A tunnel could not be opened; <see cref="IsTls"/> when the peer's identity or TLS failed.</summary>
internal sealed class TunnelException(string message, bool isTls) : Exception(message)
{
    public bool IsTls { get; } = isTls;
}

/// <summary>The source pod holds its limit of tunnels (<see cref="ProxyOptions.MaxTunnelsPerPod"/>) and none is idle.</summary>
internal sealed class TunnelPoolFullException(string message) : Exception(message);
