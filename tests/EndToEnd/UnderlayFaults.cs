using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// Breaks the network between a test cluster's nodes, always inside the cluster's own namespaces: packet
/// loss with nftables on a node's eth0, delay and reordering with tc netem there, a blackhole by taking
/// the node's port on the underlay bridge down (the node keeps its addresses and routes, as a node behind
/// a dead switch port would).
/// </summary>
internal static class UnderlayFaults
{
    private const string LossTable = "weft_fault";

    /// <summary>Drops <paramref name="percent"/> % of the packets arriving at the node's eth0, at random, and counts them.</summary>
    public static void Loss(ClusterNode node, int percent)
    {
        var rules = $$"""
            table netdev {{LossTable}} {
              chain ingress {
                type filter hook ingress device "eth0" priority 0; policy accept;
                numgen random mod 100 < {{percent}} counter drop
              }
            }
            """;
        var file = Path.Combine(Path.GetTempPath(), $"weft-fault-{node.NetnsName}.nft");
        File.WriteAllText(file, rules);
        try
        {
            HostCommand.Run("ip", "netns", "exec", node.NetnsName, "nft", "-f", file);
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>Packets the loss rule of <see cref="Loss"/> has dropped on this node so far.</summary>
    public static long Dropped(ClusterNode node)
    {
        var listing = HostCommand.Run("ip", "netns", "exec", node.NetnsName, "nft", "list", "table", "netdev", LossTable);
        var match = System.Text.RegularExpressions.Regex.Match(listing, @"counter packets (\d+)");
        return match.Success ? long.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : throw new InvalidOperationException($"no loss counter in:\n{listing}");
    }

    /// <summary>tc netem on the node's eth0 egress, e.g. "delay 50ms loss 2% reorder 25% 50%".</summary>
    public static void Netem(ClusterNode node, string parameters) =>
        HostCommand.Run("ip", ["netns", "exec", node.NetnsName, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", .. parameters.Split(' ')]);

    /// <summary>Why netem cannot be used here (tc missing, or a kernel built without sch_netem), or null when it can.</summary>
    public static string? NetemUnavailable(NetnsCluster cluster)
    {
        try
        {
            HostCommand.Run("ip", "netns", "exec", cluster.Nodes[0].NetnsName, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms");
            HostCommand.Run("ip", "netns", "exec", cluster.Nodes[0].NetnsName, "tc", "qdisc", "del", "dev", "lo", "root");
            return null;
        }
        catch (Exception e)
        {
            return $"tc netem is not available ({e.Message.Trim()}); the kernel needs CONFIG_NET_SCH_NETEM (modprobe sch_netem) and iproute2's tc";
        }
    }

    /// <summary>Cuts the node off the underlay (its bridge port down), or puts it back.</summary>
    public static void Blackhole(NetnsCluster cluster, ClusterNode node, bool on) =>
        HostCommand.Ip("-n", cluster.UnderlayNetnsName, "link", "set", $"n{node.Index}", on ? "down" : "up");
}
