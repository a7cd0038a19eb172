using System.Net;
using System.Net.Sockets;
using Weft.Admin;
using Weft.Identity;
using Weft.Inventory;
using Weft.Node;
using Weft.Telemetry;
using Weft.Tests.Telemetry;

namespace Weft.Tests.Admin;

/// <summary>An agent as the admin API sees it, without capture: a flow table, an inventory, certificates.</summary>
internal sealed class FakeAgent : IAgentView, IDisposable
{
    private AdminServer _server;
    private readonly string _caDirectory = Directory.CreateTempSubdirectory("weft-admin-ca-").FullName;
    private readonly IdentityManager _identity;

    public FakeAgent()
    {
        Inventory = TelemetryFixtures.Snapshot();
        var ca = SelfSignedRoot.Write(_caDirectory, "cluster.local");
        _identity = IdentityManager.Start(new IdentityOptions("cluster.local", ca) { WatchFiles = false });
        _identity.SetAllowed([new SpiffeId("cluster.local", "demo", "a")]);
        _identity.Get(new SpiffeId("cluster.local", "demo", "a"));
        // A free port can be taken between probing and binding (tests run in parallel): try a few.
        for (var attempt = 1; ; attempt++)
        {
            Address = $"127.0.0.1:{FreePort()}";
            _server = new AdminServer(Address, this);
            try
            {
                _server.Start();
                break;
            }
            catch (HttpListenerException) when (attempt < 5)
            {
                try
                {
                    _server.Dispose();
                }
                catch (HttpListenerException)
                {
                }
            }
        }
    }

    public string Address { get; private set; }

    public string NodeName => "node1";

    public FlowTable Flows { get; } = new();

    public InventorySnapshot Inventory { get; }

    public IReadOnlyCollection<string> EnrolledPods => ["demo/a1"];

    public IReadOnlyList<CertificateEntry> Certificates => NodeAgentView.CertificatesOf(_identity);

    public static int FreePort() => Harness.LoopbackPorts.Free();

    public void Dispose()
    {
        _server.Dispose();
        _identity.Dispose();
        Directory.Delete(_caDirectory, recursive: true);
    }
}
