using System.Net;

namespace Weft.Proxy;

/// <summary>Why an inbound connection or stream was refused; the value is the metric's <c>reason</c> label.</summary>
internal enum InboundRefusal
{
    SourceAddress,
    PeerIdentity,
    Node,
    Pod,
}

/// <summary>
/// The node-wide limits on what peers can make the agent hold for inbound traffic, so that no peer
/// (authenticated or not) can take the descriptors that outbound traffic, other pods, the CA files and
/// the admin, metrics and health endpoints need.
/// <code>
///  accept on 15006/15008 ──► per source address + node total   (before TLS: unauthenticated floods too)
///  CONNECT stream          ──► per peer identity + node total   (each admitted stream holds an app connection)
/// </code>
/// Every admission is a lease: disposing it (once, on whatever path the connection ends) gives the
/// place back. Taken once per connection or stream, never per read, so one lock is cheap enough.
/// </summary>
internal sealed class InboundAdmission
{
    private readonly Lock _gate = new();
    private readonly Dictionary<IPAddress, int> _byAddress = [];
    private readonly Dictionary<string, int> _byIdentity = new(StringComparer.Ordinal);
    private readonly Action<InboundRefusal, string>? _refused;
    private int _node;
    private int _addressTotal;
    private int _identityTotal;

    public InboundAdmission(InboundLimits limits, Action<InboundRefusal, string>? refused = null)
    {
        Limits = limits;
        _refused = refused;
    }

    public InboundLimits Limits { get; }

    /// <summary>Connections and app-side connections held for inbound traffic on this node now.</summary>
    public int NodeCount => Volatile.Read(ref _node);

    /// <summary>Accepted inbound connections (tunnels and plaintext) over every source address.</summary>
    public int AddressTotal => Volatile.Read(ref _addressTotal);

    /// <summary>Admitted CONNECT streams over every peer identity.</summary>
    public int IdentityTotal => Volatile.Read(ref _identityTotal);

    /// <summary>Source addresses and peer identities holding at least one place (both maps forget a key at zero).</summary>
    public int TrackedKeys
    {
        get
        {
            lock (_gate)
            {
                return _byAddress.Count + _byIdentity.Count;
            }
        }
    }

    public int CountFor(IPAddress source)
    {
        lock (_gate)
        {
            return _byAddress.GetValueOrDefault(source);
        }
    }

    public int CountFor(string identity)
    {
        lock (_gate)
        {
            return _byIdentity.GetValueOrDefault(identity);
        }
    }

    /// <summary>An accepted inbound TCP connection from <paramref name="source"/>, before any byte of it is read.</summary>
    public InboundLease? TryAdmitConnection(IPAddress source) => TryAdmitConnection(source, out _);

    /// <summary>As above; <paramref name="refusal"/> says which limit refused it.</summary>
    public InboundLease? TryAdmitConnection(IPAddress source, out string? refusal)
    {
        refusal = null;
        InboundRefusal reason = default;
        lock (_gate)
        {
            var held = _byAddress.GetValueOrDefault(source);
            if (held >= Limits.PerSourceAddress)
            {
                (reason, refusal) = (InboundRefusal.SourceAddress, $"{source} holds {held} inbound connections (limit {Limits.PerSourceAddress}, --max-inbound-per-address)");
            }
            else if (_node >= Limits.PerNode)
            {
                (reason, refusal) = (InboundRefusal.Node, $"the node holds {_node} inbound connections (limit {Limits.PerNode}, --max-inbound-per-node); refused a connection from {source}");
            }
            else
            {
                _byAddress[source] = held + 1;
                _addressTotal++;
                _node++;
            }
        }

        if (refusal is not null)
        {
            _refused?.Invoke(reason, refusal);
            return null;
        }

        return new InboundLease(this, source, null);
    }

    /// <summary>A CONNECT stream from an authenticated peer: it will hold a connection to the app.</summary>
    public InboundLease? TryAdmitStream(string identity) => TryAdmitStream(identity, out _);

    /// <summary>As above; <paramref name="refusal"/> says which limit refused it.</summary>
    public InboundLease? TryAdmitStream(string identity, out string? refusal)
    {
        refusal = null;
        InboundRefusal reason = default;
        lock (_gate)
        {
            var held = _byIdentity.GetValueOrDefault(identity);
            if (held >= Limits.PerPeerIdentity)
            {
                (reason, refusal) = (InboundRefusal.PeerIdentity, $"{identity} holds {held} inbound streams (limit {Limits.PerPeerIdentity}, --max-inbound-per-identity)");
            }
            else if (_node >= Limits.PerNode)
            {
                (reason, refusal) = (InboundRefusal.Node, $"the node holds {_node} inbound connections (limit {Limits.PerNode}, --max-inbound-per-node); refused a stream from {identity}");
            }
            else
            {
                _byIdentity[identity] = held + 1;
                _identityTotal++;
                _node++;
            }
        }

        if (refusal is not null)
        {
            _refused?.Invoke(reason, refusal);
            return null;
        }

        return new InboundLease(this, null, identity);
    }

    /// <summary>Counts a refusal made elsewhere (the per-pod limit) with the same counter and log.</summary>
    public void Refused(InboundRefusal reason, string detail) => _refused?.Invoke(reason, detail);

    internal void Release(IPAddress? source, string? identity)
    {
        lock (_gate)
        {
            if (source is not null)
            {
                Decrement(_byAddress, source);
                _addressTotal--;
            }

            if (identity is not null)
            {
                Decrement(_byIdentity, identity);
                _identityTotal--;
            }

            _node--;
        }
    }

    private static void Decrement<TKey>(Dictionary<TKey, int> counts, TKey key)
        where TKey : notnull
    {
        var held = counts[key] - 1;
        if (held == 0)
        {
            counts.Remove(key);
        }
        else
        {
            counts[key] = held;
        }
    }
}

/// <summary>One admitted inbound connection or stream; disposing it more than once gives the place back once.</summary>
internal sealed class InboundLease : IDisposable
{
    private InboundAdmission? _owner;
    private readonly IPAddress? _source;
    private readonly string? _identity;

    internal InboundLease(InboundAdmission owner, IPAddress? source, string? identity)
    {
        _owner = owner;
        _source = source;
        _identity = identity;
    }

    public void Dispose() => Interlocked.Exchange(ref _owner, null)?.Release(_source, _identity);
}

/// <summary>
/// The limits themselves. Defaults derive from the agent's descriptor limit: inbound traffic may hold
/// at most half of it, the other half stays for outbound traffic, the agent's own files and endpoints.
/// </summary>
internal sealed record InboundLimits(int PerPeerIdentity, int PerSourceAddress, int PerNode)
{
    /// <summary>
    /// Half the descriptors for inbound on the node; an eighth for one peer identity's streams (a
    /// service account's pods across the cluster); a sixteenth for one address's connections, which
    /// for HBONE are tunnels of 100 streams each, so few in honest use.
    /// </summary>
    public static InboundLimits FromDescriptorLimit(long descriptors)
    {
        var usable = (int)Math.Clamp(descriptors, 64, int.MaxValue);
        return new InboundLimits(PerPeerIdentity: usable / 8, PerSourceAddress: usable / 16, PerNode: usable / 2);
    }
}
