// Tiny topic admin for the local Kafka, run as a single-file Java program (JDK 11+)
// against the broker's own jars (kafka-clients is among them), because kcat cannot create topics:
//   java -cp "$KAFKA_LIB/*" deploy/local/KafkaTopic.java <bootstrap> create <topic> [partitions]
//   java -cp "$KAFKA_LIB/*" deploy/local/KafkaTopic.java <bootstrap> delete <topic>
//   java -cp "$KAFKA_LIB/*" deploy/local/KafkaTopic.java <bootstrap> list
// `deploy/local/stack topic ...` wraps this.
import java.util.Collections;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

public class KafkaTopic {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaTopic <bootstrap> create <topic> [partitions] | delete <topic> | list");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        try (Admin admin = Admin.create(p)) {
            switch (args[1]) {
                case "create": {
                    int partitions = args.length > 3 ? Integer.parseInt(args[3]) : 1;
                    try {
                        admin.createTopics(Collections.singleton(new NewTopic(args[2], partitions, (short) 1))).all().get();
                        System.out.println("created " + args[2] + " (" + partitions + " partitions)");
                    } catch (ExecutionException e) {
                        if (!(e.getCause() instanceof TopicExistsException)) throw e;
                        System.out.println("exists " + args[2]);
                    }
                    break;
                }
                case "delete":
                    admin.deleteTopics(Collections.singleton(args[2])).all().get();
                    System.out.println("deleted " + args[2]);
                    break;
                case "list":
                    admin.listTopics().names().get().stream().sorted().forEach(System.out::println);
                    break;
                default:
                    System.err.println("unknown command " + args[1]);
                    System.exit(2);
            }
        }
    }
}
