using System.Collections.Concurrent;
using System.Net;
using Weft.Capture;
using Weft.Hbone;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Proxy;

/// <summary>What every pod's proxy shares on one node.</summary>
internal sealed class ProxyServices
{
    public ProxyServices(BpfCapture capture, InventoryStore inventory, ConnectionTracker tracker, ProxyOptions options,
        IdentityManager? identity, SelfTarget? selfTarget = null, InboundAdmission? admission = null)
        : this(new CapturedDestinations(capture), NamespaceSockets.Instance, inventory, tracker, options, identity, selfTarget, admission)
    {
    }

    /// <summary>With other sockets and original destinations than the agent's: the proxy core in-process.</summary>
    public ProxyServices(IOriginalDestinations originalDestinations, IPodSockets sockets, InventoryStore inventory, ConnectionTracker tracker,
        ProxyOptions options, IdentityManager? identity, SelfTarget? selfTarget = null, InboundAdmission? admission = null)
    {
        OriginalDestinations = originalDestinations;
        Sockets = sockets;
        SelfTarget = selfTarget ?? new SelfTarget(options, []);
        Admission = admission ?? new InboundAdmission(options.Inbound ?? InboundLimits.FromDescriptorLimit(1024));
        Inventory = inventory;
        Tracker = tracker;
        Options = options;
        Identity = identity;
        Tunnels = identity is null ? null : new HbonePool(identity, options, sockets);
        Hbone = options.Tunnel();
    }

    /// <summary>Where captured outbound connections were going.</summary>
    public IOriginalDestinations OriginalDestinations { get; }

    /// <summary>Listeners and upstream sockets in the pods' namespaces.</summary>
    public IPodSockets Sockets { get; }

    public InventoryStore Inventory { get; }

    public ConnectionTracker Tracker { get; }

    public ProxyOptions Options { get; }

    /// <summary>Null when no CA is configured: traffic is forwarded in plaintext (issue #2 mode).</summary>
    public IdentityManager? Identity { get; }

    public HbonePool? Tunnels { get; }

    private int _acceptedTunnels;

    /// <summary>Tunnels other nodes' agents opened to this node's pods, open now (handshakes included).</summary>
    public int AcceptedTunnels => Volatile.Read(ref _acceptedTunnels);

    /// <summary>Counts an accepted tunnel while <paramref name="handle"/> runs.</summary>
    public async Task CountTunnelAsync(Func<Task> handle)
    {
        Interlocked.Increment(ref _acceptedTunnels);
        try
        {
            await handle().ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _acceptedTunnels);
        }
    }

    /// <summary>Which destinations are the agent itself: never connected to.</summary>
    public SelfTarget SelfTarget { get; }

    /// <summary>Node-wide inbound limits, shared by every pod's listeners.</summary>
    public InboundAdmission Admission { get; }

    public HboneSettings Hbone { get; }

    /// <summary>This node's enrolled pods by address: the in-process short cut for same-node traffic.</summary>
    public ConcurrentDictionary<IPAddress, PodProxy> LocalPods { get; } = new();

    public SpiffeId IdentityOf(string ns, string serviceAccount) => new(Identity!.TrustDomain, ns, serviceAccount);
}
