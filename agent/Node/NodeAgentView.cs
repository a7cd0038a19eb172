using System.Security.Cryptography.X509Certificates;
using Weft.Admin;
using Weft.Identity;
using Weft.Inventory;
using Weft.Telemetry;

namespace Weft.Node;

/// <summary>A running node agent as the admin API sees it.</summary>
internal sealed class NodeAgentView(NodeAgent agent) : IAgentView
{
    public string NodeName => agent.NodeName;

    public FlowTable Flows => agent.Flows;

    public InventorySnapshot Inventory => agent.Inventory.Current;

    public IReadOnlyCollection<string> EnrolledPods => agent.EnrolledPods.Select(p => p.Split('|')[0]).Order(StringComparer.Ordinal).ToList();

    public IReadOnlyList<CertificateEntry> Certificates => CertificatesOf(agent.Identity);

    public bool Ready => agent.InventoryReady;

    internal static IReadOnlyList<CertificateEntry> CertificatesOf(IdentityManager? identity)
    {
        if (identity is null)
        {
            return [];
        }

        var list = new List<CertificateEntry>();
        foreach (var svid in identity.Current)
        {
            list.Add(new CertificateEntry(svid.Id.ToString(), "Leaf", svid.Certificate, svid.RenewAt));
        }

        if (identity.SignsLocally)
        {
            var authority = identity.Authority;
            list.Add(new CertificateEntry(authority.Signer.Subject, "CA", authority.Signer));
            foreach (var intermediate in authority.Intermediates)
            {
                list.Add(new CertificateEntry(intermediate.Subject, "Intermediate", intermediate));
            }
        }

        foreach (var root in identity.Verifier.TrustBundle)
        {
            list.Add(new CertificateEntry(root.Subject, "Root", root));
        }

        return list;
    }
}
