using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;
using Weft.Telemetry;
using Weft.Tests.Identity;

namespace Weft.Tests.Proxy;

/// <summary>
/// Two nodes' proxies in-process over loopback with a real CA, TLS 1.3 and the HBONE engine: a server pod's proxy,
/// whose app (port 8080) is an echo server on loopback, and the client pods' proxies, whose tunnels all reach the
/// server pod's tunnel listener. Identities are issued for the pods given; the inventory is the YAML given.
/// </summary>
internal sealed class InProcessTunnelRig : IAsyncDisposable
{
    public const string Domain = "cluster.local";

    private readonly TempDir _dir = new();
    private readonly List<PodProxy> _clients = [];

    private InProcessTunnelRig(IEnumerable<LocalPod> pods, string inventoryYaml, ProxyOptions options, LocalPod server)
    {
        Identity = IdentityManager.Start(new IdentityOptions(Domain, TestCa.Root("root").WriteTo(_dir.Path)) { WatchFiles = false, CheckInterval = TimeSpan.FromHours(1) });
        Identity.SetAllowed([.. pods.Select(Id)]);
        Echo = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Echo.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Echo.Listen(1024);
        _ = LoopbackEcho.ServeAsync(Echo, Echoing);
        Inventory.Publish(InventoryBuilder.Build(InventoryYaml.Load(inventoryYaml, "inventory.yaml")));

        ServerTracker = new ConnectionTracker(ServerFlows, options.IdleTimeout);
        Server = PodProxy.Start(server, new ProxyServices(new RecordedDestinations(), ServerSockets, Inventory, ServerTracker, options, Identity));
        var app = (IPEndPoint)Echo.LocalEndPoint!;
        ServerSockets.Redirect = destination => destination.Port == 8080 ? app : destination;

        // Every node's tunnel port is the server pod's tunnel listener here.
        var tunnel = new IPEndPoint(IPAddress.IPv6Loopback, ((IPEndPoint)Server.TunnelListener!.LocalEndPoint!).Port);
        ClientSockets.Redirect = destination => destination.Port == HbonePool.TunnelPort ? tunnel : destination;
        ClientTracker = new ConnectionTracker(ClientFlows, options.IdleTimeout);
        ClientServices = new ProxyServices(Destinations, ClientSockets, Inventory, ClientTracker, options, Identity);
    }

    /// <summary>Starts the server pod's proxy; <paramref name="pods"/> are the pods that get identities.</summary>
    public static InProcessTunnelRig Start(IEnumerable<LocalPod> pods, string inventoryYaml, ProxyOptions options, LocalPod server) =>
        new(pods, inventoryYaml, options, server);

    public IdentityManager Identity { get; }

    public InventoryStore Inventory { get; } = new();

    public RecordedDestinations Destinations { get; } = new();

    public LoopbackPodSockets ClientSockets { get; } = new();

    public LoopbackPodSockets ServerSockets { get; } = new();

    public FlowTable ClientFlows { get; } = new();

    public FlowTable ServerFlows { get; } = new();

    public ConnectionTracker ClientTracker { get; }

    public ConnectionTracker ServerTracker { get; }

    /// <summary>What a client pod's proxy is started with (<see cref="StartClient"/>).</summary>
    public ProxyServices ClientServices { get; }

    public PodProxy Server { get; }

    /// <summary>The server pod's app: echoes every connection, then half-closes.</summary>
    public Socket Echo { get; }

    /// <summary>How many connections the echo server holds now.</summary>
    public StrongBox<int> Echoing { get; } = new();

    public static SpiffeId Id(LocalPod pod) => new(Domain, pod.Namespace, pod.ServiceAccount);

    /// <summary>A client pod's proxy, stopped with the rig.</summary>
    public PodProxy StartClient(LocalPod pod)
    {
        var proxy = PodProxy.Start(pod, ClientServices);
        _clients.Add(proxy);
        return proxy;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var client in _clients)
        {
            await client.DisposeAsync();
        }

        await Server.DisposeAsync();
        ClientTracker.Dispose();
        ServerTracker.Dispose();
        Echo.Dispose();
        Identity.Dispose();
        _dir.Dispose();
    }
}
