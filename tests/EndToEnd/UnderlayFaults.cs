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

    /// <summary>
    /// Delays every TCP packet leaving the node's eth0 by <paramref name="delayMs"/> ms, <paramref name="reorderPercent"/> %
    /// of them 10 ms more so later ones overtake them: an iptables (legacy: the nft backend's queue needs
    /// CONFIG_NFT_QUEUE) NFQUEUE rule hands them to `weft-kit app netdelay` in the node's namespace, which
    /// gives them back late. It is netem's delay and reorder for a kernel without sch_netem (docs/faults.md).
    /// </summary>
    public static async Task<ManagedProcess> DelayAsync(ClusterNode node, int delayMs, int reorderPercent)
    {
        var delay = node.StartWeft("app", "netdelay", "--queue", "7", "--delay-ms", delayMs.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--reorder-percent", reorderPercent.ToString(System.Globalization.CultureInfo.InvariantCulture), "--reorder-extra-ms", "10");
        await delay.WaitForStdoutLineAsync(l => l.Contains("\"queueing\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        HostCommand.Run("ip", "netns", "exec", node.NetnsName, "iptables-legacy", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth0", "-p", "tcp",
            "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass");
        return delay;
    }

    /// <summary>Takes the rule of <see cref="DelayAsync"/> away and stops its program: (packets delayed, of those reordered).</summary>
    public static async Task<(long Packets, long Reordered)> StopDelayAsync(ClusterNode node, ManagedProcess delay)
    {
        HostCommand.Run("ip", "netns", "exec", node.NetnsName, "iptables-legacy", "-t", "mangle", "-F", "POSTROUTING");
        delay.Stop();
        var done = System.Text.Json.JsonDocument.Parse(await delay.WaitForStdoutLineAsync(l => l.Contains("\"done\"", StringComparison.Ordinal), TimeSpan.FromSeconds(30))).RootElement;
        return (done.GetProperty("packets").GetInt64(), done.GetProperty("reordered").GetInt64());
    }

    /// <summary>Cuts the node off the underlay (its bridge port down), or puts it back.</summary>
    public static void Blackhole(NetnsCluster cluster, ClusterNode node, bool on) =>
        HostCommand.Ip("-n", cluster.UnderlayNetnsName, "link", "set", $"n{node.Index}", on ? "down" : "up");
}
