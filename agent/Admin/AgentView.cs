using System.Security.Cryptography.X509Certificates;
using Weft.Identity;
using Weft.Inventory;
using Weft.Telemetry;

namespace Weft.Admin;

/// <summary>What the admin API shows of an agent; a seam so the API can be tested without one.</summary>
internal interface IAgentView
{
    string NodeName { get; }

    FlowTable Flows { get; }

    InventorySnapshot Inventory { get; }

    /// <summary>"namespace/name" of each pod the agent captures.</summary>
    IReadOnlyCollection<string> EnrolledPods { get; }

    /// <summary>Certificates the agent holds, public parts only.</summary>
    IReadOnlyList<CertificateEntry> Certificates { get; }

    /// <summary>The inventory is loaded (a Kubernetes source: after its first full sync).</summary>
    bool Ready => true;
}

/// <summary>
/// One certificate: a workload's SVID (Leaf), the agent's signing CA (CA), an intermediate, or a trust
/// bundle root (Root). Never the private key.
/// </summary>
internal sealed record CertificateEntry(string Name, string Type, X509Certificate2 Certificate, DateTimeOffset? RenewAt = null);
